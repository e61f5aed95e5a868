//! Where a server listens. A server bound to an address listens there and on nothing else:
//! its listener, and UCX's own listening socket (the `tcp` transport's, one per worker and
//! device), are restricted to the device of `network.bind_addr`. A wildcard bind listens
//! everywhere and says so; `network.devices` overrides the derived device; an unknown device
//! stops the server with an error naming the key.
//!
//! A server's sockets are found by inode: `/proc/<pid>/fd` links (`socket:[inode]`) matched
//! against `/proc/<pid>/net/{tcp,tcp6,udp,udp6}`, which show the server's own network
//! namespace. The namespace case builds a network namespace with a veth pair (it needs root;
//! it says SKIPPED otherwise; `common::netns`) and removes both even when the test fails.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use benchfs_ucx::{netif, Context, Features};
use common::netns::Netns;
use common::rpc::{RawPeer, Rt};
use common::{note, test_root};

/// How long a server may take to publish its address or to exit. A liveness bound only.
const START_BOUND: Duration = Duration::from_secs(30);

/// Held by every test here: the namespace test adds and removes an interface on this host,
/// which changes what an unrestricted server listens on, and UCX fails to create a worker
/// ("No such device") when an interface it listed at start-up has gone.
fn host_network() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A socket of a process as `/proc/<pid>/net` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sock {
    proto: &'static str,
    local: SocketAddr,
    /// TCP `LISTEN` (state `0A`).
    listening: bool,
}

/// The TCP and UDP sockets process `pid` holds.
fn sockets_of(pid: u32) -> Vec<Sock> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed since the listing
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.parse::<u64>().unwrap());
        }
    }
    let mut socks = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields[9].parse().unwrap();
            if inodes.contains(&inode) {
                socks.push(Sock {
                    proto,
                    local: parse_proc_addr(fields[1]),
                    listening: proto.starts_with("tcp") && fields[3] == "0A",
                });
            }
        }
    }
    socks
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel
/// prints it, 32-bit words in host byte order, then the port in hex.
fn parse_proc_addr(text: &str) -> SocketAddr {
    let (ip, port) = text.split_once(':').unwrap();
    let port = u16::from_str_radix(port, 16).unwrap();
    let word = |i: usize| {
        u32::from_str_radix(&ip[8 * i..8 * i + 8], 16)
            .unwrap()
            .to_ne_bytes()
    };
    let ip = if ip.len() == 8 {
        IpAddr::V4(Ipv4Addr::from(word(0)))
    } else {
        let mut octets = [0u8; 16];
        for i in 0..4 {
            octets[4 * i..4 * i + 4].copy_from_slice(&word(i));
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, port)
}

/// The addresses `pid` accepts traffic on: listening TCP sockets and bound UDP sockets.
fn listening_addrs(pid: u32) -> Vec<SocketAddr> {
    sockets_of(pid)
        .into_iter()
        .filter(|s| s.listening || (s.proto.starts_with("udp") && s.local.port() != 0))
        .map(|s| s.local)
        .collect()
}

/// One `benchfsd`, optionally run under a command prefix (`ip netns exec <ns>`), killed
/// when dropped.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server bound to `bind`, with `env` set, and waits until it publishes its
    /// address; an early exit is an error carrying its output.
    fn start(prefix: &[&str], bind: &str, env: &[(&str, &str)]) -> Result<Server, String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::start_once(prefix, bind, env) {
                // UCX lists the interfaces when the context is made and opens them when the
                // worker is: an interface that another process removed in between fails
                // the worker. That is the host changing under the test, not the server.
                Err(e) if e.contains("ucp_worker_create: No such device") && attempts < 3 => {}
                result => return result,
            }
        }
    }

    fn start_once(prefix: &[&str], bind: &str, env: &[(&str, &str)]) -> Result<Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("benchfs-listen")
            .tempdir_in(test_root())
            .unwrap();
        let config = dir.path().join("benchfs.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\ndata_dir = \"{}\"\nlog_level = \"debug\"\n[storage]\nbackend = \"memory\"\n\
                 [network]\nbind_addr = \"{bind}\"\nregistry_dir = \"{}\"\n",
                dir.path().join("data").display(),
                dir.path().join("registry").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("out.log")).unwrap();
        let (program, args) = match prefix.split_first() {
            Some((program, args)) => (program.to_string(), args.to_vec()),
            None => (env!("CARGO_BIN_EXE_benchfsd").to_string(), Vec::new()),
        };
        let mut command = Command::new(program);
        if !prefix.is_empty() {
            command.args(args).arg(env!("CARGO_BIN_EXE_benchfsd"));
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn benchfsd");
        let mut server = Server { child, dir };
        let deadline = Instant::now() + START_BOUND;
        while server.published().is_none() {
            if let Some(status) = server.child.try_wait().unwrap() {
                return Err(format!(
                    "benchfsd exited with {status}:\n{}",
                    server.output()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("benchfsd did not publish:\n{}", server.output()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// The address it published.
    fn published(&self) -> Option<SocketAddr> {
        benchfs::registry::read(&self.dir.path().join("registry"))
            .ok()?
            .first()
            .map(|e| e.addr)
    }

    fn addr(&self) -> SocketAddr {
        self.published().expect("published")
    }

    /// The benchfsd process (`ip netns exec` execs it, so it keeps the pid).
    fn pid(&self) -> u32 {
        let pid = self.child.id();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.to_string_lossy().contains("benchfsd"),
            "pid {pid} is {}, not benchfsd",
            exe.display()
        );
        pid
    }

    /// What it wrote on stdout and stderr (its log, UCX's warnings, a start-up error).
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }

    /// Asserts that it listens on at least its listener and UCX's own socket, and only on
    /// `ip`; returns the addresses.
    fn assert_listens_only_on(&self, ip: IpAddr) -> Vec<SocketAddr> {
        let addrs = listening_addrs(self.pid());
        assert!(
            addrs.contains(&self.addr()),
            "the published listener {} is not among {addrs:?}",
            self.addr()
        );
        // The listener, and the worker's tcp transport (BenchFS needs tcp: see benchfs_ucx).
        assert!(
            addrs.len() >= 2,
            "expected the listener and UCX's tcp listener, found {addrs:?}"
        );
        let elsewhere: Vec<_> = addrs.iter().filter(|a| a.ip() != ip).collect();
        assert!(
            elsewhere.is_empty(),
            "bound to {ip}, the server also listens on {elsewhere:?} (all: {addrs:?})\n{}",
            self.output()
        );
        addrs
    }

    /// A ping over a fresh UCX connection is answered: the restricted server still serves.
    /// The client uses UCX's defaults, or only `devices` (`UCX_NET_DEVICES`).
    fn assert_serves(&self, devices: Option<&str>) {
        let addr = self.addr();
        let context = match devices {
            Some(devices) => Context::with_config(Features::ALL, &[("NET_DEVICES", devices)]),
            None => Context::new(Features::ALL),
        }
        .unwrap();
        let pinged = std::panic::catch_unwind(|| {
            Rt::new().block_on(async move { RawPeer::connect_with(&context, addr).ping(1).await })
        });
        if let Err(panic) = pinged {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "no answer from {addr}: {why}\nthe server's output:\n{}",
                self.output()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host's addresses that are not loopback, where UCX would listen unrestricted.
fn other_addresses() -> Vec<IpAddr> {
    netif::interfaces()
        .unwrap()
        .iter()
        .filter_map(netif::Interface::tcp_listen_addr)
        .filter(|a| !a.is_loopback())
        .collect()
}

#[test]
fn loopback_server_listens_only_on_loopback() {
    let _host = host_network();
    let server = Server::start(&[], "127.0.0.1:0", &[]).unwrap();
    // Served first, so that whatever a connection opens is counted too.
    server.assert_serves(None);
    let addrs = server.assert_listens_only_on(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let log = server.output();
    assert!(log.contains("UCX restricted to network devices"), "{log}");
    let others = other_addresses();
    note(&format!(
        "bound to 127.0.0.1, listening on {addrs:?}; this host's other addresses: {others:?}"
    ));
    if others.is_empty() {
        common::skip(
            "the unrestricted control",
            "this host has only loopback; the test checked that every socket is on 127.0.0.1",
        );
        return;
    }
    // The control: with every device allowed, UCX listens on the other addresses too, so
    // the check above would have caught it.
    let all = Server::start(&[], "127.0.0.1:0", &[("BENCHFS_NETWORK_DEVICES", "all")]).unwrap();
    let addrs = listening_addrs(all.pid());
    assert!(
        others.iter().any(|o| addrs.iter().any(|a| a.ip() == *o)),
        "with devices = [\"all\"] UCX should listen on one of {others:?}; it listens on {addrs:?}"
    );
}

#[test]
fn wildcard_bind_listens_everywhere_and_says_so() {
    let _host = host_network();
    let usable = || -> HashSet<IpAddr> {
        netif::interfaces()
            .unwrap()
            .iter()
            .filter_map(netif::Interface::tcp_listen_addr)
            .collect()
    };
    let before = usable();
    let server = Server::start(&[], "0.0.0.0:0", &[]).unwrap();
    let addrs = listening_addrs(server.pid());
    let after = usable();
    let log = server.output();
    assert!(
        log.contains("bind_addr is a wildcard") && log.contains("every network device"),
        "{log}"
    );
    // The listener on the wildcard, and UCX's tcp listener on each usable interface.
    let port = server.addr().port();
    assert!(
        addrs.contains(&SocketAddr::from(([0, 0, 0, 0], port))),
        "{addrs:?}"
    );
    let ucx: HashSet<IpAddr> = addrs
        .iter()
        .filter(|a| a.port() != port)
        .map(|a| a.ip())
        .collect();
    // Every usable interface; one that came or went meanwhile may be either way.
    let stable: HashSet<IpAddr> = before.intersection(&after).copied().collect();
    let possible: HashSet<IpAddr> = before.union(&after).copied().collect();
    assert!(
        stable.is_subset(&ucx) && ucx.is_subset(&possible),
        "UCX listens on {ucx:?}; the usable interfaces have {stable:?} (all: {addrs:?})"
    );
}

#[test]
fn devices_setting_overrides_the_bind_address() {
    let _host = host_network();
    // A wildcard listener, but UCX's transports only on loopback.
    let server = Server::start(&[], "0.0.0.0:0", &[("BENCHFS_NETWORK_DEVICES", "lo")]).unwrap();
    let addrs = listening_addrs(server.pid());
    let port = server.addr().port();
    let ucx: Vec<_> = addrs.iter().filter(|a| a.port() != port).collect();
    assert!(
        !ucx.is_empty() && ucx.iter().all(|a| a.ip().is_loopback()),
        "with devices = [\"lo\"] UCX listens on {ucx:?}"
    );
    assert!(server
        .output()
        .contains("network.devices restricts only UCX's own listening sockets"));
}

#[test]
fn unknown_device_stops_the_server_naming_the_key() {
    let _host = host_network();
    for (devices, expect) in [
        ("no-such-dev0", "no network device \"no-such-dev0\""),
        ("no_such_hca:1", "no network device \"no_such_hca:1\""),
    ] {
        let err = Server::start(&[], "127.0.0.1:0", &[("BENCHFS_NETWORK_DEVICES", devices)])
            .err()
            .expect("a server with an unknown device must not start");
        assert!(
            err.contains("network.devices") && err.contains(expect),
            "{err}"
        );
    }
    // An address no interface has is refused before UCX tries to bind it.
    let err = Server::start(&[], "203.0.113.77:0", &[]).err().unwrap();
    assert!(
        err.contains("network.bind_addr") && err.contains("203.0.113.77"),
        "{err}"
    );
}

/// A network namespace linked to this host by a veth pair of this test's own, in a /24
/// no interface here uses: the namespace, its address and its link's name; `None`
/// (skipped, saying so) where namespaces cannot be made.
fn linked_namespace(case: &str) -> Option<(Netns, Ipv4Addr, String)> {
    let netns = match Netns::create() {
        Ok(n) => n,
        Err(e) => {
            common::skip(
                case,
                &format!("cannot create a network namespace (needs root and iproute2): {e}"),
            );
            return None;
        }
    };
    // A /24 of 10.250.0.0/16 that no interface here uses, on this test's own veth pair.
    let used = |n: u8| {
        netif::interfaces().unwrap().iter().any(|i| {
            i.addrs
                .iter()
                .any(|a| matches!(a, IpAddr::V4(v4) if v4.octets()[..3] == [10, 250, n]))
        })
    };
    let start = std::process::id() % 250;
    let subnet = (0..250)
        .map(|i| ((start + i) % 250 + 1) as u8)
        .find(|&n| !used(n))
        .expect("a free /24 in 10.250.0.0/16");
    let host = Ipv4Addr::new(10, 250, subnet, 1);
    let inner = Ipv4Addr::new(10, 250, subnet, 2);
    let peer = netns.link(host, inner);
    Some((netns, inner, peer))
}

#[test]
fn namespace_server_listens_only_on_its_address() {
    let _host = host_network();
    let Some((netns, inner, peer)) = linked_namespace("the network-namespace case of listen.rs")
    else {
        return;
    };
    let prefix = ["ip", "netns", "exec", netns.name.as_str()];
    let server = Server::start(&prefix, &format!("{inner}:0"), &[]).unwrap();
    // Reachable from the host side of the pair; served first, so that whatever a
    // connection opens is counted too. The client uses only this test's veth: an
    // unrestricted one may pick a device (another test's veth, eth0) that the namespace
    // has no route back to.
    server.assert_serves(Some(&netns.host_link));
    let addrs = server.assert_listens_only_on(IpAddr::V4(inner));
    let log = server.output();
    assert!(log.contains(&format!("devices={peer}")), "{log}");
    note(&format!(
        "namespace {}: bound to {inner} on {peer}, listening on {addrs:?}",
        netns.name
    ));
    // The control: unrestricted, UCX also listens on the namespace's loopback.
    let all = Server::start(
        &prefix,
        &format!("{inner}:0"),
        &[("BENCHFS_NETWORK_DEVICES", "all")],
    )
    .unwrap();
    let addrs = listening_addrs(all.pid());
    assert!(
        addrs.iter().any(|a| a.ip().is_loopback()),
        "with devices = [\"all\"] UCX should listen on the namespace's loopback too: {addrs:?}"
    );
    drop((all, server));
    drop(netns);
}

#[test]
fn a_bind_to_a_secondary_address_is_refused_unless_devices_say_so() {
    let _host = host_network();
    let Some((netns, first, peer)) = linked_namespace("the secondary-address case of listen.rs")
    else {
        return;
    };
    let [a, b, c, _] = first.octets();
    let secondary = Ipv4Addr::new(a, b, c, 3);
    let add_address = |addr: Ipv4Addr, label: &[&str]| {
        let add = format!("{addr}/24");
        let args = [
            "netns",
            "exec",
            &netns.name,
            "ip",
            "addr",
            "add",
            &add,
            "dev",
            &peer,
        ];
        common::netns::ip(&[&args[..], label].concat()).unwrap();
    };
    add_address(secondary, &[]);
    let prefix = ["ip", "netns", "exec", netns.name.as_str()];
    // UCX's own socket would be on the first address, where a peer that reaches only the
    // secondary one cannot follow the handshake: the server must not come up and publish.
    let err = Server::start(&prefix, &format!("{secondary}:0"), &[])
        .err()
        .expect("a server bound to a secondary address must not start");
    for named in [
        "network.bind_addr",
        &secondary.to_string(),
        &first.to_string(),
        &peer,
    ] {
        assert!(err.contains(named), "the error names {named}: {err}");
    }
    // Listing the interface is the deliberate choice, and serves.
    let server = Server::start(
        &prefix,
        &format!("{secondary}:0"),
        &[("BENCHFS_NETWORK_DEVICES", peer.as_str())],
    )
    .unwrap();
    assert_eq!(server.addr().ip(), IpAddr::V4(secondary));
    drop(server);
    // A labelled alias (`ip addr add ... label veth:1`) is a secondary address of the
    // same interface, which the kernel lists under the label's name: refused alike.
    let labelled = Ipv4Addr::new(a, b, c, 4);
    add_address(labelled, &["label", &format!("{peer}:1")]);
    let err = Server::start(&prefix, &format!("{labelled}:0"), &[])
        .err()
        .expect("a server bound to a labelled alias must not start");
    let interface = format!("interface {peer}, {first}");
    assert!(
        err.contains(&interface),
        "the error names {interface}: {err}"
    );
    drop(netns);
}

#[test]
fn proc_net_addresses_parse() {
    assert_eq!(
        parse_proc_addr("0100007F:1F90"),
        "127.0.0.1:8080".parse().unwrap()
    );
    let v6 = if cfg!(target_endian = "little") {
        "00000000000000000000000001000000:0050"
    } else {
        "00000000000000000000000000000001:0050"
    };
    assert_eq!(parse_proc_addr(v6), "[::1]:80".parse().unwrap());
}
