//! The host's network devices as UCX names them, for `UCX_NET_DEVICES`: TCP devices are
//! interfaces (`lo`, `eth0`, `ib0`), RDMA devices are ports (`mlx5_0:1`).
//!
//! UCX's `tcp` transport opens one listening socket per worker on every device it may use,
//! bound to that interface's first address of the preferred family (`UCX_TCP_AF_PRIO`,
//! IPv4 before IPv6, never IPv6 loopback or link-local). So a context restricted to the
//! devices of one address ([`devices_of`]) listens only on that interface. RDMA transports
//! open no IP sockets.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// One network interface and its addresses, in the order the kernel lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The interface name, which is also UCX's TCP device name.
    pub name: String,
    /// Up and running (`IFF_UP | IFF_RUNNING`); UCX's `tcp` ignores interfaces that are not.
    pub active: bool,
    /// Its IPv4 and IPv6 addresses.
    pub addrs: Vec<IpAddr>,
}

impl Interface {
    /// The address UCX's `tcp` transport listens on for this interface with its default
    /// `UCX_TCP_AF_PRIO` (`inet,inet6`): the first IPv4 address, else the first IPv6
    /// address that is neither loopback nor link-local. `None` when UCX cannot use it.
    pub fn tcp_listen_addr(&self) -> Option<IpAddr> {
        if !self.active {
            return None;
        }
        let v4 = self.addrs.iter().find(|a| a.is_ipv4());
        let v6 = self.addrs.iter().find(|a| match a {
            IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => false,
        });
        v4.or(v6).copied()
    }
}

/// Every interface of this host (of this network namespace), with or without addresses,
/// each with the addresses of its labelled aliases after its own, in the kernel's order.
pub fn interfaces() -> std::io::Result<Vec<Interface>> {
    let list = IfAddrs::new()?;
    let mut out: Vec<Interface> = Vec::new();
    for (label, flags, addr) in list.iter() {
        // A labelled alias (`eth0:1`) is an address of its interface (`eth0`), which is
        // what UCX sees and listens on; interface names never hold a ':'.
        let name = match label.split_once(':') {
            Some((interface, _)) => interface.to_string(),
            None => label,
        };
        let active = flags & (libc::IFF_UP | libc::IFF_RUNNING) as u32
            == (libc::IFF_UP | libc::IFF_RUNNING) as u32;
        let index = match out.iter().position(|i| i.name == name) {
            Some(index) => index,
            None => {
                out.push(Interface {
                    name,
                    active,
                    addrs: Vec::new(),
                });
                out.len() - 1
            }
        };
        out[index].addrs.extend(addr);
    }
    Ok(out)
}

/// The interface that has `ip` among its addresses, if any. A wildcard address (`0.0.0.0`,
/// `::`) belongs to no interface.
pub fn interface_of(ip: IpAddr) -> std::io::Result<Option<Interface>> {
    if ip.is_unspecified() {
        return Ok(None);
    }
    Ok(interfaces()?.into_iter().find(|i| i.addrs.contains(&ip)))
}

/// The RDMA ports (`mlx5_0:1`) of the hardware behind interface `name`: an IPoIB or RoCE
/// interface shares its PCI function with an RDMA device. Empty for other interfaces.
pub fn rdma_ports_of(name: &str) -> Vec<String> {
    let dir = Path::new("/sys/class/net")
        .join(name)
        .join("device/infiniband");
    let mut ports = Vec::new();
    for device in read_names(&dir) {
        let port_dir = Path::new("/sys/class/infiniband")
            .join(&device)
            .join("ports");
        for port in read_names(&port_dir) {
            ports.push(format!("{device}:{port}"));
        }
    }
    ports.sort();
    ports
}

/// Whether `name` is a device UCX could be told about: an interface of this host, or an
/// RDMA port written `device:port`.
pub fn device_exists(name: &str, interfaces: &[Interface]) -> bool {
    if interfaces.iter().any(|i| i.name == name) {
        return true;
    }
    match name.split_once(':') {
        Some((device, port)) if !device.is_empty() && !port.is_empty() => {
            !device.contains('/')
                && !port.contains('/')
                && Path::new("/sys/class/infiniband")
                    .join(device)
                    .join("ports")
                    .join(port)
                    .exists()
        }
        _ => false,
    }
}

/// The devices a context should be restricted to so that it uses only the interface of
/// `ip` (UCX's TCP device) and the RDMA ports of the same hardware. `Ok(None)` when `ip` is
/// a wildcard; an error when no interface of this host has `ip`.
pub fn devices_of(ip: IpAddr) -> Result<Option<Vec<String>>, String> {
    if ip.is_unspecified() {
        return Ok(None);
    }
    let all = interfaces().map_err(|e| format!("cannot list network interfaces: {e}"))?;
    let Some(interface) = all.iter().find(|i| i.addrs.contains(&ip)) else {
        return Err(format!(
            "{ip} is not an address of this host; its interfaces have {}",
            describe(&all)
        ));
    };
    let mut devices = vec![interface.name.clone()];
    devices.extend(rdma_ports_of(&interface.name));
    Ok(Some(devices))
}

/// `lo: 127.0.0.1, ::1; eth0: 192.0.2.2`, for messages.
pub fn describe(interfaces: &[Interface]) -> String {
    let parts: Vec<String> = interfaces
        .iter()
        .map(|i| {
            let addrs: Vec<String> = i.addrs.iter().map(IpAddr::to_string).collect();
            if addrs.is_empty() {
                format!("{}: no address", i.name)
            } else {
                format!("{}: {}", i.name, addrs.join(", "))
            }
        })
        .collect();
    parts.join("; ")
}

/// The file names in `dir`, or none when it cannot be read.
fn read_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The list `getifaddrs` returns, freed on drop.
struct IfAddrs(*mut libc::ifaddrs);

impl IfAddrs {
    fn new() -> std::io::Result<IfAddrs> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: head is an out-pointer; on success the list is ours until freeifaddrs.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(IfAddrs(head))
    }

    /// Each entry as (interface name, flags, IP address if it is IPv4 or IPv6).
    fn iter(&self) -> impl Iterator<Item = (String, u32, Option<IpAddr>)> + '_ {
        let mut next = self.0;
        std::iter::from_fn(move || {
            if next.is_null() {
                return None;
            }
            // SAFETY: next is a node of the list self owns, which lives as long as self.
            let entry = unsafe { &*next };
            next = entry.ifa_next;
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(entry.ifa_name) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: ifa_addr is null or points to a sockaddr of the family it states.
            let addr = unsafe { ip_of(entry.ifa_addr) };
            Some((name, entry.ifa_flags, addr))
        })
    }
}

impl Drop for IfAddrs {
    fn drop(&mut self) {
        // SAFETY: self.0 came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(self.0) };
    }
}

/// The IP address in `addr`, if it is an IPv4 or IPv6 socket address.
///
/// # Safety
///
/// `addr` is null or points to a valid socket address whose size matches its family.
unsafe fn ip_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: every socket address starts with its family (caller's contract).
    match i32::from(unsafe { (*addr).sa_family }) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in (caller's contract).
            let sin = unsafe { std::ptr::read_unaligned(addr as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6 (caller's contract).
            let sin6 = unsafe { std::ptr::read_unaligned(addr as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found() {
        let lo = interface_of(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .unwrap()
            .expect("127.0.0.1 is on an interface");
        assert!(lo.addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(device_exists(&lo.name, &interfaces().unwrap()));
        assert_eq!(
            devices_of(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(),
            Some(vec![lo.name.clone()])
        );
    }

    #[test]
    fn wildcards_and_strangers() {
        assert_eq!(devices_of(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).unwrap(), None);
        assert_eq!(devices_of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)).unwrap(), None);
        // TEST-NET-3, which no interface here should have.
        let err = devices_of("203.0.113.77".parse().unwrap()).unwrap_err();
        assert!(err.contains("203.0.113.77"), "{err}");
        let all = interfaces().unwrap();
        assert!(!device_exists("no-such-device0", &all));
        assert!(!device_exists("no_such_hca:1", &all));
        assert!(!device_exists("../x:1", &all));
    }

    #[test]
    fn tcp_listen_addr_prefers_ipv4_and_skips_link_local() {
        let mut i = Interface {
            name: "x".into(),
            active: true,
            addrs: vec![
                "fe80::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                "192.0.2.9".parse().unwrap(),
            ],
        };
        assert_eq!(i.tcp_listen_addr(), Some("192.0.2.9".parse().unwrap()));
        i.addrs.pop();
        assert_eq!(i.tcp_listen_addr(), Some("fd00::2".parse().unwrap()));
        i.addrs = vec!["::1".parse().unwrap()];
        assert_eq!(i.tcp_listen_addr(), None);
        i.active = false;
        i.addrs = vec!["192.0.2.9".parse().unwrap()];
        assert_eq!(i.tcp_listen_addr(), None);
    }
}
