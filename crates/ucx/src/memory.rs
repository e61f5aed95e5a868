//! Registered memory (`ucp_mem_map`) and remote keys (`ucp_rkey_pack` / `ucp_ep_rkey_unpack`).
//!
//! **Boundary:** a packed remote key plus an address is a capability: a peer holding them
//! can read and write the region with [`Endpoint::get`] and [`Endpoint::put`], and UCX does
//! not check bounds on every transport (shared-memory `cma` accesses the process directly).
//! Hand keys only to peers of the same job, as UCX assumes. UCX parses packed keys without a
//! length, so unpack only keys that came from such a peer.

use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use crate::context::Context;
use crate::endpoint::Endpoint;
use crate::error::{check, Status, UcxError};
use crate::sys;

/// Memory registered with UCX for remote access: allocated by UCX or a caller's buffer.
///
/// The bytes may change at any time through a peer's put, so the region hands out copies
/// ([`MemoryRegion::read_at`]) rather than references; callers order remote writes and
/// local reads with their own protocol (for example, a put, a flush, then a message).
///
/// **Drop order:** unmapped on drop; it holds its [`Context`], which outlives it. Remote
/// keys made from it stay valid at the peers until then.
pub struct MemoryRegion {
    handle: sys::ucp_mem_h,
    address: *mut u8,
    len: usize,
    /// The caller's buffer, for a registered (not allocated) region. Its heap block does
    /// not move while the Vec is not touched, so `address` stays valid.
    _buffer: Option<Vec<u8>>,
    context: Arc<Context>,
}

impl MemoryRegion {
    /// Allocates and registers `len` zeroed bytes (`UCP_MEM_MAP_ALLOCATE`).
    pub fn allocate(context: &Arc<Context>, len: usize) -> Result<MemoryRegion, UcxError> {
        if len == 0 {
            return Err(UcxError::from_status("ucp_mem_map", Status::INVALID_PARAM));
        }
        let handle = map(
            context,
            std::ptr::null_mut(),
            len,
            sys::UCP_MEM_MAP_ALLOCATE,
        )?;
        let mut attr = sys::ucp_mem_attr_t {
            field_mask: (sys::UCP_MEM_ATTR_FIELD_ADDRESS | sys::UCP_MEM_ATTR_FIELD_LENGTH) as u64,
            ..Default::default()
        };
        // SAFETY: handle is a live mapping of this context; attr is an out-parameter.
        let status = unsafe { sys::ucp_mem_query(handle, &mut attr) };
        let region = MemoryRegion {
            handle,
            address: attr.address as *mut u8,
            len: attr.length.min(len),
            _buffer: None,
            context: Arc::clone(context),
        };
        check("ucp_mem_query", status)?;
        if region.address.is_null() || region.len < len {
            return Err(UcxError::from_status(
                "ucp_mem_query",
                Status::INVALID_PARAM,
            ));
        }
        // SAFETY: UCX allocated at least `len` writable bytes at `address` for us.
        unsafe { std::ptr::write_bytes(region.address, 0, region.len) };
        Ok(region)
    }

    /// Registers a caller's buffer; the region owns it until dropped.
    pub fn register(context: &Arc<Context>, mut buffer: Vec<u8>) -> Result<MemoryRegion, UcxError> {
        if buffer.is_empty() {
            return Err(UcxError::from_status("ucp_mem_map", Status::INVALID_PARAM));
        }
        let address = buffer.as_mut_ptr();
        let len = buffer.len();
        let handle = map(context, address as *mut c_void, len, 0)?;
        Ok(MemoryRegion {
            handle,
            address,
            len,
            _buffer: Some(buffer),
            context: Arc::clone(context),
        })
    }

    /// The region's start address, to send to peers along with the packed key.
    pub fn address(&self) -> u64 {
        self.address as u64
    }

    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never true: empty regions are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Packs a remote key for this region (`ucp_rkey_pack`), to send to a peer.
    pub fn pack_rkey(&self) -> Result<Vec<u8>, UcxError> {
        let mut buffer: *mut c_void = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: context and mapping are alive; buffer and size are out-parameters.
        let status = unsafe {
            sys::ucp_rkey_pack(self.context.handle(), self.handle, &mut buffer, &mut size)
        };
        check("ucp_rkey_pack", status)?;
        // SAFETY: UCX returned `size` readable bytes at `buffer`.
        let packed = unsafe { std::slice::from_raw_parts(buffer as *const u8, size) }.to_vec();
        // SAFETY: buffer came from ucp_rkey_pack and is released once.
        unsafe { sys::ucp_rkey_buffer_release(buffer) };
        Ok(packed)
    }

    /// Copies `out.len()` bytes starting at `offset` out of the region.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), UcxError> {
        self.check_range("MemoryRegion::read_at", offset, out.len())?;
        // SAFETY: the range is inside the mapping (checked); `out` is a distinct Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(self.address.add(offset), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }

    /// Copies `data` into the region starting at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), UcxError> {
        self.check_range("MemoryRegion::write_at", offset, data.len())?;
        // SAFETY: the range is inside the mapping (checked), which is writable memory that
        // no Rust reference points into; `data` is a distinct Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.address.add(offset), data.len())
        };
        Ok(())
    }

    fn check_range(&self, op: &'static str, offset: usize, len: usize) -> Result<(), UcxError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(UcxError::from_status(op, Status::OUT_OF_RANGE)),
        }
    }
}

fn map(
    context: &Context,
    address: *mut c_void,
    len: usize,
    flags: u32,
) -> Result<sys::ucp_mem_h, UcxError> {
    let params = sys::ucp_mem_map_params_t {
        field_mask: (sys::UCP_MEM_MAP_PARAM_FIELD_ADDRESS
            | sys::UCP_MEM_MAP_PARAM_FIELD_LENGTH
            | sys::UCP_MEM_MAP_PARAM_FIELD_FLAGS) as u64,
        address,
        length: len,
        flags,
        ..Default::default()
    };
    let mut handle: sys::ucp_mem_h = std::ptr::null_mut();
    // SAFETY: the context is alive; address is null (allocate) or `len` bytes the caller
    // keeps alive until ucp_mem_unmap.
    let status = unsafe { sys::ucp_mem_map(context.handle(), &params, &mut handle) };
    check("ucp_mem_map", status)?;
    Ok(handle)
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping belongs to this context and is unmapped once; the buffer (if
        // any) is dropped after this, as fields drop after `drop`.
        let status = unsafe { sys::ucp_mem_unmap(self.context.handle(), self.handle) };
        if status != sys::UCS_OK {
            tracing::warn!(status = sys::status_string(status), "ucp_mem_unmap failed");
        }
    }
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("address", &self.address)
            .field("len", &self.len)
            .finish()
    }
}

/// A peer's memory region key, unpacked for one endpoint. Cloning shares it.
///
/// **Drop order:** it holds its [`Endpoint`], so it is destroyed before the endpoint is
/// closed; in-flight puts and gets hold a clone until they complete.
#[derive(Clone)]
pub struct RemoteKey {
    inner: Rc<RemoteKeyInner>,
}

struct RemoteKeyInner {
    handle: sys::ucp_rkey_h,
    endpoint: Endpoint,
}

impl RemoteKey {
    /// Unpacks a key a peer made with [`MemoryRegion::pack_rkey`], for use on `endpoint`.
    pub fn unpack(endpoint: &Endpoint, packed: &[u8]) -> Result<RemoteKey, UcxError> {
        if packed.is_empty() {
            return Err(UcxError::from_status(
                "ucp_ep_rkey_unpack",
                Status::INVALID_PARAM,
            ));
        }
        if let Some(e) = endpoint.failure() {
            return Err(e);
        }
        let mut handle: sys::ucp_rkey_h = std::ptr::null_mut();
        // SAFETY: the endpoint is alive and open (not failed, so not aborted); packed is
        // readable for the call (see the module docs for why its contents must come from a
        // trusted peer).
        let status = unsafe {
            sys::ucp_ep_rkey_unpack(
                endpoint.handle(),
                packed.as_ptr() as *const c_void,
                &mut handle,
            )
        };
        check("ucp_ep_rkey_unpack", status)?;
        let rkeys = &endpoint.inner.rkeys;
        rkeys.set(rkeys.get() + 1);
        Ok(RemoteKey {
            inner: Rc::new(RemoteKeyInner {
                handle,
                endpoint: endpoint.clone(),
            }),
        })
    }

    /// The endpoint this key was unpacked for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub(crate) fn handle(&self) -> sys::ucp_rkey_h {
        self.inner.handle
    }

    /// Hands this reference to the worker, to be dropped after the current UCX callback.
    pub(crate) fn defer_destroy(self) {
        let worker = Rc::clone(self.inner.endpoint.worker());
        worker.defer_rkey_destroy(self);
    }
}

impl Drop for RemoteKeyInner {
    fn drop(&mut self) {
        // SAFETY: the key came from ucp_ep_rkey_unpack on self.endpoint, which is still open
        // (we hold it, and `Endpoint::abort` does not close an endpoint with live keys),
        // and it is destroyed once, outside UCX callbacks.
        unsafe { sys::ucp_rkey_destroy(self.handle) };
        let rkeys = &self.endpoint.inner.rkeys;
        rkeys.set(rkeys.get() - 1);
    }
}

impl std::fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKey")
            .field("handle", &self.inner.handle)
            .finish()
    }
}
