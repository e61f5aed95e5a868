//! Discovery: servers publish their addresses as files in a directory every node sees.
//!
//! Each server writes `<registry_dir>/<node_id>.addr` holding
//! `<node_id> <ip:port> replicas=<n> vnodes=<v> <setting>=<value>...\n` (the settings
//! name the backend, the chunk size and the inline limit, for reports), atomically (write a temporary file,
//! then rename), and removes it on a clean exit. Clients read every `*.addr` file; anything
//! else in the directory is ignored. The replica and virtual-node counts are the
//! cluster's: a client given only the registry places records and chunks by them, not by
//! its own configuration's defaults (an entry of two words, from an older build, leaves
//! them to the client's configuration).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One published server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// The server's node id.
    pub node_id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server's `replication.replicas`; `None` in an entry that does not say.
    pub replicas: Option<u32>,
    /// The server's `placement.virtual_nodes`; `None` in an entry that does not say.
    pub virtual_nodes: Option<u32>,
    /// Other settings it publishes, by name, for reports (`backend`, `chunk_size`,
    /// `inline_bytes`), and any a later build adds: names are lowercase letters and `_`,
    /// values words without white space.
    pub settings: BTreeMap<String, String>,
}

impl ServerEntry {
    /// An entry that names no ring settings (tests, and entries of older builds).
    pub fn new(node_id: impl Into<String>, addr: SocketAddr) -> ServerEntry {
        ServerEntry {
            node_id: node_id.into(),
            addr,
            replicas: None,
            virtual_nodes: None,
            settings: BTreeMap::new(),
        }
    }
}

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A file system operation failed.
    #[error("registry {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file in the registry does not hold a valid entry.
    #[error("registry file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_path_buf();
    move |source| RegistryError::Io { op, path, source }
}

/// The file a server's entry lives in.
pub fn entry_path(dir: &Path, node_id: &str) -> PathBuf {
    dir.join(format!("{node_id}.addr"))
}

/// Publishes `entry` atomically.
pub fn publish(dir: &Path, entry: &ServerEntry) -> Result<PathBuf, RegistryError> {
    if dir.exists() && !dir.is_dir() {
        return Err(io("create", dir)(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "a file of that name is there; the registry is a directory",
        )));
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = entry_path(dir, &entry.node_id);
    let tmp = dir.join(format!(
        ".{}.addr.tmp.{}",
        entry.node_id,
        std::process::id()
    ));
    std::fs::write(&tmp, entry_line(entry)).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    // Back: no longer departed.
    let departed = departed_path(dir, &entry.node_id);
    match std::fs::remove_file(&departed) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove", &departed)(e))
        }
        _ => {}
    }
    Ok(path)
}

/// The setting an entry gives its server's store birth in (ns since the Unix epoch).
pub const BORN_SETTING: &str = "born_ns";

/// The setting an entry gives its server's `network.shared_memory` in (`true`, `false`).
pub const SHARED_MEMORY_SETTING: &str = "shared_memory";

/// The marker `<node_id>.member`: the store birth of the cluster life the server named
/// `node_id` served in. It stays when the entry goes (a clean stop, or a launcher that
/// clears a killed server's entry before starting it again).
pub fn member_path(dir: &Path, node_id: &str) -> PathBuf {
    dir.join(format!("{node_id}.member"))
}

/// The node ids with a membership marker in `dir`: every server that served in the
/// cluster, up or not, with its data or without (none if `dir` cannot be read).
pub fn members(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let node = name.strip_suffix(".member")?;
            (!node.is_empty() && !node.starts_with('.')).then(|| node.to_owned())
        })
        .collect()
}

/// The address a client gives a member that publishes no entry (see
/// [`unpublished_members`]): it holds that member's place on the ring, and the client looks
/// for the member's entry again before it connects.
pub const UNPUBLISHED_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// The members (see [`members`]) that publish no entry among `entries`: stopped (cleanly,
/// or killed and their entry since removed) or still starting. A ring made without them
/// places files where the clients that know them do not look.
pub fn unpublished_members(dir: &Path, entries: &[ServerEntry]) -> Vec<String> {
    let mut missing: Vec<String> = members(dir)
        .into_iter()
        .filter(|node| !entries.iter().any(|e| &e.node_id == node))
        .collect();
    missing.sort();
    missing
}

/// The birth a marker gives a member named before its server started (by `benchfs
/// cluster up`): no store, so no earlier life for a server starting to rejoin.
pub const BORN_UNKNOWN: u64 = 0;

/// Records that the server named `node_id` serves with a store born at `born_ns`.
pub fn mark_member(dir: &Path, node_id: &str, born_ns: u64) -> Result<(), RegistryError> {
    let path = member_path(dir, node_id);
    let tmp = dir.join(format!(".{node_id}.member.tmp.{}", std::process::id()));
    std::fs::write(&tmp, format!("{born_ns}\n")).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))
}

/// Whether a server named `node_id` starting now rejoins a cluster it served in: its
/// marker is there, and another server in the registry has had its store since no later
/// than `apart_ns` after the marked birth (so it may hold what the earlier life held).
/// A registry left by a cluster that stopped cleanly holds no entries, and one whose
/// servers all began later names a new cluster: neither is rejoined.
pub fn rejoins(dir: &Path, node_id: &str, apart_ns: u64) -> bool {
    let marked = std::fs::read_to_string(member_path(dir, node_id))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let Some(marked) = marked else {
        return false;
    };
    read(dir).unwrap_or_default().iter().any(|entry| {
        entry.node_id != node_id
            && born_ns(entry).is_some_and(|born| born <= marked.saturating_add(apart_ns))
    })
}

/// When the cluster whose registry is `dir` began: the earliest store birth its
/// membership markers record (a server that rejoins keeps its life's mark, so a restart
/// does not move it), if any does.
pub fn cluster_born_ns(dir: &Path) -> Option<u64> {
    members(dir)
        .iter()
        .filter_map(|node| std::fs::read_to_string(member_path(dir, node)).ok())
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .filter(|&born| born != BORN_UNKNOWN)
        .min()
}

/// When the store of `entry`'s server began ([`BORN_SETTING`]), if the entry says.
pub fn born_ns(entry: &ServerEntry) -> Option<u64> {
    entry.settings.get(BORN_SETTING)?.parse().ok()
}

/// The marker a server that stopped cleanly leaves: `<node_id>.departed`.
fn departed_path(dir: &Path, node_id: &str) -> PathBuf {
    dir.join(format!("{node_id}.departed"))
}

/// Node ids of servers that stopped cleanly and have not come back. They may still hold
/// the only record of a file, so nothing may conclude a file is unnamed while one is away.
pub fn departed(dir: &Path) -> Result<Vec<String>, RegistryError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let item = item.map_err(io("list", dir))?;
        let name = item.file_name();
        if let Some(node_id) = name.to_string_lossy().strip_suffix(".departed") {
            out.push(node_id.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// The entry `node_id`'s server publishes now in `dir`, if it is there and readable.
pub fn published(dir: &Path, node_id: &str) -> Option<ServerEntry> {
    std::fs::read_to_string(entry_path(dir, node_id))
        .ok()
        .and_then(|text| parse_entry(&text).ok())
}

/// Removes a server's own entry, leaving a departed marker (see [`departed`]): only if
/// the entry still names `entry`'s address, so a server
/// never withdraws another's (one that took over its node id after it hung, say). A
/// missing entry is not an error.
pub fn withdraw(dir: &Path, entry: &ServerEntry) -> Result<(), RegistryError> {
    if published(dir, &entry.node_id).as_ref() != Some(entry) {
        return Ok(());
    }
    let path = entry_path(dir, &entry.node_id);
    let departed = departed_path(dir, &entry.node_id);
    std::fs::write(&departed, format!("{}\n", entry.node_id)).map_err(io("write", &departed))?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
        _ => Ok(()),
    }
}

/// An entry file's contents, which [`parse_entry`] reads back.
pub fn entry_line(entry: &ServerEntry) -> String {
    let mut line = format!("{} {}", entry.node_id, entry.addr);
    if let Some(n) = entry.replicas {
        line += &format!(" replicas={n}");
    }
    if let Some(v) = entry.virtual_nodes {
        line += &format!(" vnodes={v}");
    }
    for (key, value) in &entry.settings {
        line += &format!(" {key}={value}");
    }
    line + "\n"
}

/// Parses one entry file's contents.
pub fn parse_entry(text: &str) -> Result<ServerEntry, String> {
    let mut words = text.split_whitespace();
    let (Some(node_id), Some(addr)) = (words.next(), words.next()) else {
        return Err(
            "expected `<node_id> <ip:port> [replicas=<n>] [vnodes=<v>] [<setting>=<value>...]`"
                .to_string(),
        );
    };
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let mut entry = ServerEntry::new(node_id, addr);
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("unexpected {word:?} after the address"))?;
        let slot = match key {
            "replicas" => &mut entry.replicas,
            "vnodes" => &mut entry.virtual_nodes,
            _ if is_setting_name(key) && !value.is_empty() => {
                if entry.settings.insert(key.into(), value.into()).is_some() {
                    return Err(format!("{key} given twice"));
                }
                continue;
            }
            _ => return Err(format!("malformed setting {word:?}")),
        };
        if slot.is_some() {
            return Err(format!("{key} given twice"));
        }
        let n: u32 = value
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{key}={value:?} is not a positive count"))?;
        *slot = Some(n);
    }
    Ok(entry)
}

/// A setting's name as servers write them: lowercase letters and `_`.
fn is_setting_name(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Every published server, sorted by node id. A `*.addr` file that holds no entry, or
/// holds one other than its name's node id's, is [`RegistryError::Malformed`].
pub fn read(dir: &Path) -> Result<Vec<ServerEntry>, RegistryError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let item = item.map_err(io("list", dir))?;
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        // Every `*.addr`, hidden or not: a node id may begin with '.' (temporary files end
        // in `.tmp.<pid>`).
        if !name.ends_with(".addr") {
            continue;
        }
        let malformed = |reason: String| RegistryError::Malformed {
            path: path.clone(),
            reason,
        };
        if item.file_type().is_ok_and(|kind| kind.is_dir()) {
            return Err(malformed("a directory, not a server's entry".into()));
        }
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let entry = parse_entry(&text).map_err(malformed)?;
        // A server writes its entry to `<node id>.addr` only, so an entry anywhere else
        // is a stray copy, and two of one node id would give the ring a node twice.
        if path != entry_path(dir, &entry.node_id) {
            return Err(malformed(format!(
                "it holds node {}'s entry, which a server publishes as {}.addr only",
                entry.node_id, entry.node_id
            )));
        }
        out.push(entry);
    }
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_where_the_registry_should_be_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, b"").unwrap();
        let entry = ServerEntry::new("node0", "127.0.0.1:1".parse().unwrap());
        let err = publish(&file, &entry).unwrap_err().to_string();
        assert!(
            err.contains("afile") && err.contains("the registry is a directory"),
            "{err}"
        );
        let marked = members(dir.path());
        assert!(marked.is_empty(), "{marked:?}");
        mark_member(dir.path(), "node3", 1).unwrap();
        assert_eq!(members(dir.path()), ["node3"]);
    }

    #[test]
    fn publish_read_withdraw() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerEntry {
            replicas: Some(2),
            virtual_nodes: Some(150),
            settings: BTreeMap::from([("backend".into(), "io_uring".into())]),
            ..ServerEntry::new("b", "127.0.0.1:1".parse().unwrap())
        };
        let b = ServerEntry::new("a", "127.0.0.1:2".parse().unwrap());
        publish(dir.path(), &a).unwrap();
        publish(dir.path(), &b).unwrap();
        std::fs::write(dir.path().join("README"), "not an entry").unwrap();
        std::fs::write(dir.path().join(".x.addr.tmp.1"), "half").unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![b.clone(), a.clone()]);
        // Another server's entry under the same node id is not withdrawn.
        let impostor = ServerEntry {
            addr: "127.0.0.1:3".parse().unwrap(),
            ..b.clone()
        };
        withdraw(dir.path(), &impostor).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![b.clone(), a.clone()]);
        withdraw(dir.path(), &b).unwrap();
        withdraw(dir.path(), &b).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![a]);
        std::fs::write(dir.path().join("bad.addr"), "x").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(RegistryError::Malformed { .. })
        ));
    }

    #[test]
    fn a_stray_copy_or_a_directory_named_like_an_entry_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let entry = ServerEntry::new("node0", "127.0.0.1:1".parse().unwrap());
        let path = publish(dir.path(), &entry).unwrap();
        let copy = dir.path().join("copy.addr");
        std::fs::copy(&path, &copy).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Malformed { path, .. } if *path == copy),
            "{err}"
        );
        assert!(err.to_string().contains("node0.addr only"), "{err}");
        std::fs::remove_file(&copy).unwrap();
        let sub = dir.path().join("node8.addr");
        std::fs::create_dir(&sub).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Malformed { path, .. } if *path == sub),
            "{err}"
        );
        std::fs::remove_dir(&sub).unwrap();
        assert_eq!(read(dir.path()).unwrap(), [entry]);
    }

    // A server whose node id begins with '.' (which the configuration accepts) published
    // `.<id>.addr`, and `read` skipped it as a hidden file: no client or peer ever saw it.
    #[test]
    fn a_node_id_beginning_with_a_dot_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<ServerEntry> = [".", "..", ".a"]
            .iter()
            .map(|id| ServerEntry::new(*id, "127.0.0.1:1".parse().unwrap()))
            .collect();
        for entry in &entries {
            publish(dir.path(), entry).unwrap();
        }
        assert_eq!(read(dir.path()).unwrap(), entries);
    }

    #[test]
    fn parses_entries() {
        assert!(parse_entry("n 127.0.0.1:5\n").is_ok());
        assert!(parse_entry("n [::1]:5").is_ok());
        assert!(parse_entry("n").is_err());
        assert!(parse_entry("n host:5").is_err());
        assert!(parse_entry("n 1.2.3.4:5 extra").is_err());
        let full = parse_entry("n 1.2.3.4:5 replicas=2 vnodes=150\n").unwrap();
        assert_eq!((full.replicas, full.virtual_nodes), (Some(2), Some(150)));
        let later = parse_entry("n 1.2.3.4:5 replicas=2 shards=4 backend=memory\n").unwrap();
        assert_eq!(later.replicas, Some(2));
        assert_eq!(
            later.settings,
            BTreeMap::from([
                ("backend".into(), "memory".into()),
                ("shards".into(), "4".into())
            ])
        );
        for bad in [
            "replicas=0",
            "replicas=x",
            "replicas=1 replicas=2",
            "junk",
            "=",
            "shards=",
            "Shards=4",
            "vnodes=",
            "shards=1 shards=2",
        ] {
            assert!(parse_entry(&format!("n 1.2.3.4:5 {bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_server_rejoins_only_a_cluster_that_ran_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let born = |node: &str, ns: u64| ServerEntry {
            settings: BTreeMap::from([(BORN_SETTING.into(), ns.to_string())]),
            ..ServerEntry::new(node, "127.0.0.1:1".parse().unwrap())
        };
        let apart = 5;
        // Never served here.
        publish(dir.path(), &born("b", 100)).unwrap();
        assert!(!rejoins(dir.path(), "a", apart));
        // Served with a store born at 100, beside b born at 100 that still runs.
        mark_member(dir.path(), "a", 100).unwrap();
        assert!(rejoins(dir.path(), "a", apart));
        // b began within the cluster's start (before a, or just after): still rejoining.
        publish(dir.path(), &born("b", 104)).unwrap();
        assert!(rejoins(dir.path(), "a", apart));
        // Every other server began well later, or is gone: a new cluster.
        publish(dir.path(), &born("b", 200)).unwrap();
        assert!(!rejoins(dir.path(), "a", apart));
        withdraw(dir.path(), &born("b", 200)).unwrap();
        assert!(!rejoins(dir.path(), "a", apart));
        // Its own entry counts for nothing.
        publish(dir.path(), &born("a", 50)).unwrap();
        assert!(!rejoins(dir.path(), "a", apart));
    }
}
