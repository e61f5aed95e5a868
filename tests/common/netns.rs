//! Network namespaces for the tests that need them (root and iproute2): running `ip`, one
//! namespace joined to this one by a veth pair ([`Netns`], tests/listen.rs), and K hosts on
//! a bridge of their own, made by `scripts/netns-hosts.sh` ([`Hosts`], tests/hosts.rs).
//! Both remove what they made when dropped, so a failing test leaves nothing behind.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a link may take to come up. A liveness bound only.
const LINK_UP_BOUND: Duration = Duration::from_secs(30);

/// `ip <args>`, and whether it succeeded (with its stderr when it did not).
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Waits until `dev` in namespace `ns` is up and running (carrier on both ends of a veth),
/// which is when UCX uses it.
pub fn wait_link_up(ns: &str, dev: &str) {
    let deadline = Instant::now() + LINK_UP_BOUND;
    loop {
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", "dev", dev])
            .output()
            .unwrap();
        let state = String::from_utf8_lossy(&out.stdout);
        if state.contains("state UP") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dev} in {ns} did not come up: {state}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why network namespaces cannot be made here (not root, no iproute2, no permission), if so:
/// tries to make one named `probe` and removes it.
pub fn unavailable(probe: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!("needs root (effective uid {euid})"));
    }
    match ip(&["netns", "add", probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", probe]);
            None
        }
        Err(e) => Some(format!("cannot create a network namespace: {e}")),
    }
}

/// A network namespace and a veth pair into it, removed on drop.
pub struct Netns {
    pub name: String,
    /// This side of the veth pair; the other is `inner_link`, inside.
    pub host_link: String,
    pub inner_link: String,
}

impl Netns {
    /// Creates the namespace; `Err` when this process may not (not root, no `ip`).
    pub fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let name = format!("benchfs-listen-{pid}");
        ip(&["netns", "add", &name])?;
        Ok(Netns {
            name,
            host_link: format!("bfs{pid}a"),
            inner_link: format!("bfs{pid}b"),
        })
    }

    /// A veth pair with `host/24` on this side and `inner/24` inside, with the namespace's
    /// loopback up too, so that it has another interface to not listen on. Returns the
    /// inner link's name once it is up and running.
    pub fn link(&self, host: Ipv4Addr, inner: Ipv4Addr) -> String {
        let peer = self.inner_link.clone();
        let ns = ["netns", "exec", self.name.as_str(), "ip"];
        let inside = |args: &[&str]| ip(&[&ns[..], args].concat()).unwrap();
        ip(&[
            "link",
            "add",
            &self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])
        .unwrap();
        ip(&["link", "set", &peer, "netns", &self.name]).unwrap();
        ip(&["addr", "add", &format!("{host}/24"), "dev", &self.host_link]).unwrap();
        ip(&["link", "set", &self.host_link, "up"]).unwrap();
        inside(&["addr", "add", &format!("{inner}/24"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        wait_link_up(&self.name, &peer);
        peer
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; the namespace goes last.
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// One host of [`Hosts`]: its namespace, its one network device and its address.
#[derive(Debug, Clone)]
pub struct Host {
    /// `h1` .. `hK`, or `client`.
    pub name: String,
    /// The network namespace, `<prefix>-<name>`.
    pub ns: String,
    /// Its veth, `veth-<name>`.
    pub dev: String,
    pub addr: Ipv4Addr,
}

/// K hosts and a client, each a network namespace with one veth to a bridge in a namespace
/// of its own (`scripts/netns-hosts.sh up K PREFIX`), removed on drop
/// (`scripts/netns-hosts.sh down PREFIX`, which also ends what still runs in them).
pub struct Hosts {
    pub prefix: String,
    /// `h1` .. `hK`.
    pub hosts: Vec<Host>,
    pub client: Host,
}

impl Hosts {
    /// The script, from this checkout.
    pub fn script() -> &'static Path {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/netns-hosts.sh"
        ))
    }

    fn run_script(args: &[&str]) -> Result<String, String> {
        let out = Command::new(Self::script())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", Self::script().display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "netns-hosts.sh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Makes `k` hosts and a client under `prefix`. Panics when the script fails: call
    /// [`unavailable`] first to skip where namespaces cannot be made at all.
    pub fn up(k: usize, prefix: &str) -> Hosts {
        let info = Self::run_script(&["up", &k.to_string(), prefix]).unwrap();
        // From here on, whatever happens, drop removes them.
        let mut hosts = Hosts {
            prefix: prefix.to_string(),
            hosts: Vec::new(),
            client: Host {
                name: String::new(),
                ns: String::new(),
                dev: String::new(),
                addr: Ipv4Addr::UNSPECIFIED,
            },
        };
        for line in info.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [name, ns, dev, addr] = f[..] else {
                panic!("netns-hosts.sh info: unexpected line {line:?}");
            };
            let host = Host {
                name: name.to_string(),
                ns: ns.to_string(),
                dev: dev.to_string(),
                addr: addr.parse().expect("an IPv4 address"),
            };
            if name == "client" {
                hosts.client = host;
            } else {
                hosts.hosts.push(host);
            }
        }
        assert_eq!(hosts.hosts.len(), k, "netns-hosts.sh up printed:\n{info}");
        assert_eq!(hosts.client.name, "client", "{info}");
        hosts
    }

    /// `program` on `host`: in its network namespace, and in an IPC and a UTS namespace of
    /// its own (host name: the namespace's name), as a separate host is
    /// (`netns-hosts.sh exec`). The same pid is the program's, so signals reach it.
    pub fn exec(host: &Host, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args([
                "netns", "exec", &host.ns, "unshare", "--uts", "--ipc", "sh", "-c",
            ])
            .arg(r#"hostname "$0" && exec "$@""#)
            .arg(&host.ns)
            .arg(program);
        command
    }

    /// Plugs (`up`) or unplugs `host`'s cable: its port on the bridge.
    pub fn set_link(&self, host: &Host, up: bool) {
        let state = if up { "up" } else { "down" };
        Self::run_script(&["link", &self.prefix, &host.name, state]).unwrap();
    }
}

impl Drop for Hosts {
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        if let Err(e) = Self::run_script(&["down", &self.prefix]) {
            // Not a panic: this may run while a failed test unwinds.
            eprintln!("cleaning up the namespaces of {}: {e}", self.prefix);
        }
    }
}
