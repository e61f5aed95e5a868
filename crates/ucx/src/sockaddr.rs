//! Conversions between `std::net::SocketAddr` and the C socket addresses UCX takes.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::sys;

/// A C socket address with its length, ready to pass as `ucs_sock_addr_t`.
pub(crate) struct RawSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawSockAddr {
    pub(crate) fn new(addr: SocketAddr) -> RawSockAddr {
        // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v4.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: as above.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawSockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// The address as UCX's `ucs_sock_addr_t`, valid while `self` is.
    pub(crate) fn as_ucs(&self) -> sys::ucs_sock_addr_t {
        sys::ucs_sock_addr_t {
            addr: &self.storage as *const libc::sockaddr_storage as *const sys::sockaddr,
            addrlen: self.len,
        }
    }
}

/// Reads a socket address UCX filled in; `None` for families other than IPv4 and IPv6.
pub(crate) fn from_storage(storage: &sys::sockaddr_storage) -> Option<SocketAddr> {
    let ptr = storage as *const sys::sockaddr_storage;
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which fits in it;
            // read_unaligned because the C storage type's alignment is not libc's.
            let sin = unsafe { std::ptr::read_unaligned(ptr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { std::ptr::read_unaligned(ptr as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

const _: () = assert!(
    std::mem::size_of::<sys::sockaddr_storage>() == std::mem::size_of::<libc::sockaddr_storage>()
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(addr: &str) {
        let addr: SocketAddr = addr.parse().unwrap();
        let raw = RawSockAddr::new(addr);
        let ucs = raw.as_ucs();
        // SAFETY: ucs.addr points into raw.storage, a full sockaddr_storage.
        let storage = unsafe { &*(ucs.addr as *const sys::sockaddr_storage) };
        assert_eq!(from_storage(storage), Some(addr));
    }

    #[test]
    fn round_trips() {
        check("127.0.0.1:0");
        check("10.1.2.3:65535");
        check("[::1]:4242");
        check("[fe80::1%3]:7");
    }
}
