//! Raw UCX (ucp) declarations plus the few header macros that bindgen cannot translate.
//!
//! **Boundary:** this is the only module that names the generated FFI. Everything in it is
//! `unsafe` to call; the rest of the crate wraps it.

#[allow(
    missing_docs,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unreachable_pub,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod bindings;

pub(crate) use bindings::*;

use core::ffi::c_void;

/// `UCS_PTR_IS_ERR`: the pointer encodes an error status (the top 100 addresses).
pub(crate) fn ptr_is_err(ptr: ucs_status_ptr_t) -> bool {
    (ptr as usize) >= (UCS_ERR_LAST as isize as usize)
}

/// `UCS_PTR_STATUS`: the status encoded in a pointer that `ptr_is_err` accepted.
pub(crate) fn ptr_status(ptr: ucs_status_ptr_t) -> ucs_status_t {
    // Truncation is the C macro's behaviour: the error codes fit in the low byte.
    ptr as isize as ucs_status_t
}

/// The status string UCX gives for `status`; static storage inside libucs.
pub(crate) fn status_string(status: ucs_status_t) -> &'static str {
    // SAFETY: ucs_status_string accepts any value and returns a pointer to a static,
    // NUL-terminated string (or "unknown error" for values it does not know).
    let ptr = unsafe { ucs_status_string(status) };
    if ptr.is_null() {
        return "unknown UCX status";
    }
    // SAFETY: non-null pointers from ucs_status_string are static C strings.
    let text = unsafe { core::ffi::CStr::from_ptr(ptr) };
    text.to_str().unwrap_or("UCX status string is not UTF-8")
}

// Declared here rather than generated: bindgen would bring glibc's whole `FILE` layout along
// for this one debugging call, and libc already names the type.
extern "C" {
    /// Prints the endpoint's configuration (its lanes and their transports) to `stream`.
    pub(crate) fn ucp_ep_print_info(ep: ucp_ep_h, stream: *mut libc::FILE);
}

/// A null `void *`, spelled once.
pub(crate) fn null_mut() -> *mut c_void {
    core::ptr::null_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ptr: usize, is_err: bool) {
        assert_eq!(ptr_is_err(ptr as ucs_status_ptr_t), is_err, "ptr {ptr:#x}");
    }

    #[test]
    fn status_pointers() {
        check(0, false);
        check(0x1000, false);
        check(usize::MAX, true);
        check(UCS_ERR_LAST as isize as usize, true);
        check((UCS_ERR_LAST as isize - 1) as usize, false);
        let ptr = UCS_ERR_CANCELED as isize as usize as ucs_status_ptr_t;
        assert!(ptr_is_err(ptr));
        assert_eq!(ptr_status(ptr), UCS_ERR_CANCELED);
    }

    #[test]
    fn status_strings() {
        assert_eq!(status_string(UCS_OK), "Success");
        assert_eq!(status_string(UCS_ERR_CANCELED), "Request canceled");
    }
}
