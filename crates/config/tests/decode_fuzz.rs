//! The decoders of this crate meet arbitrary input and answer with a value or an error,
//! never a panic: registry entry files (`registry::parse_entry`, and `registry::read` over
//! a directory of arbitrary names and contents, huge lines and bytes that are not UTF-8
//! included) and `benchfs.toml` with `BENCHFS_*` overrides (`ServerConfig`). Every entry a
//! server publishes reads back equal. `BENCHFS_FUZZ_CASES` sets the number of cases of each
//! test (`make fuzz` runs a long one).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{SocketAddr, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use benchfs_config::registry::{self, RegistryError, ServerEntry};
use benchfs_config::{ConfigError, ServerConfig};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// Cases per test: `BENCHFS_FUZZ_CASES` when set, else `default`.
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("BENCHFS_FUZZ_CASES").map_or(default, |v| {
        v.parse().expect("BENCHFS_FUZZ_CASES must be a number")
    })
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: fuzz_cases(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A node id the configuration accepts (`node.node_id`).
fn node_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}".prop_filter("not a directory's name", |id| id != "." && id != "..")
}

/// An address a server listens on: IPv4 or IPv6, with a scope id or not.
fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(SocketAddr::from),
        (
            any::<[u16; 8]>(),
            any::<u16>(),
            prop_oneof![Just(0), any::<u32>()]
        )
            .prop_map(|(ip, port, scope)| SocketAddr::V6(SocketAddrV6::new(
                ip.into(),
                port,
                0,
                scope
            ))),
    ]
}

/// Words and white space that come near an entry: node ids, addresses good and bad, and
/// anything printable.
fn entry_text() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        node_id(),
        addr().prop_map(|a| a.to_string()),
        "[0-9a-f.:%\\[\\]]{0,30}",
        "\\PC{0,20}",
    ];
    let space = "[ \t\r\n\u{b}\u{c}\u{85}\u{a0}\u{2003}]{0,3}";
    (vec((space, word), 0..4), space).prop_map(|(words, end)| {
        let mut text: String = words.into_iter().map(|(s, w)| s + &w).collect();
        text.push_str(&end);
        text
    })
}

/// One line of up to 256 KiB, perhaps after an entry.
fn huge_line() -> impl Strategy<Value = String> {
    (
        any::<char>(),
        0usize..1 << 18,
        proptest::option::of(entry_text()),
    )
        .prop_map(|(c, n, head)| head.unwrap_or_default() + &c.to_string().repeat(n / 4 + 1))
}

/// A name a registry directory could hold: an entry's, a temporary or hidden one, another
/// file's, or bytes that are not UTF-8 ending in `.addr`.
fn file_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[A-Za-z0-9._-]{1,12}\\.addr".prop_map(String::into_bytes),
        "\\.[A-Za-z0-9_-]{1,12}\\.addr(\\.tmp\\.[0-9]{1,5})?".prop_map(String::into_bytes),
        "x[A-Za-z0-9._-]{0,12}(\\.departed)?".prop_map(String::into_bytes),
        vec(1u8.., 1..12).prop_map(|mut name| {
            name.retain(|&b| b != b'/');
            name.extend(b".addr");
            name
        }),
    ]
}

/// What a registry file could hold: an entry, near misses, random bytes, bytes that are not
/// UTF-8, a huge line.
fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (node_id(), addr()).prop_map(|(n, a)| format!("{n} {a}\n").into_bytes()),
        entry_text().prop_map(String::into_bytes),
        vec(any::<u8>(), 0..64),
        (node_id(), addr(), vec(128u8.., 1..4)).prop_map(|(n, a, junk)| [
            format!("{n} {a}").as_bytes(),
            &junk
        ]
        .concat()),
        huge_line().prop_map(String::into_bytes),
    ]
}

/// Entries in a comparable order (`read` sorts by node id only).
fn sorted(mut entries: Vec<ServerEntry>) -> Vec<ServerEntry> {
    entries.sort_by_key(|e| (e.node_id.clone(), e.addr.to_string()));
    entries
}

/// Writes `files` into a new directory and says which `*.addr` files `read` must return
/// (parsed, each in its node id's file) and which it must fail on.
fn registry_dir(
    files: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> (tempfile::TempDir, Vec<ServerEntry>, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for (name, text) in files {
        let path = dir.path().join(OsStr::from_bytes(name));
        std::fs::write(&path, text).unwrap();
        if !String::from_utf8_lossy(name).ends_with(".addr") {
            continue;
        }
        match std::str::from_utf8(text).map(registry::parse_entry) {
            Ok(Ok(entry)) if *name == format!("{}.addr", entry.node_id).into_bytes() => {
                good.push(entry)
            }
            _ => bad.push(path),
        }
    }
    (dir, sorted(good), bad)
}

/// Whether `extra` words are settings `registry::parse_entry` takes: `key=value`, each
/// key at most once, a known count (`replicas`, `vnodes`) positive, or another key
/// (lowercase letters and `_`) with any non-empty value.
fn settings_valid(extra: &[&str]) -> bool {
    let mut seen = std::collections::HashSet::new();
    extra.iter().all(|word| match word.split_once('=') {
        Some((key @ ("replicas" | "vnodes"), value)) => {
            seen.insert(key) && value.parse::<u32>().is_ok_and(|n| n > 0)
        }
        Some((key, value)) => {
            !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && !value.is_empty()
                && seen.insert(key)
        }
        None => false,
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn parse_entry_takes_a_word_an_address_and_settings(
        text in prop_oneof![4 => entry_text(), 1 => any::<String>(), 1 => huge_line()],
    ) {
        let words: Vec<&str> = text.split_whitespace().collect();
        let valid = words.len() >= 2
            && words[1].parse::<SocketAddr>().is_ok()
            && settings_valid(&words[2..]);
        match registry::parse_entry(&text) {
            Ok(entry) => {
                prop_assert!(valid, "{text:?} parsed as {entry:?}");
                prop_assert_eq!(&entry.node_id, words[0]);
                // What a server would publish for it reads back the same.
                let published = registry::entry_line(&entry);
                prop_assert_eq!(registry::parse_entry(&published), Ok(entry));
            }
            Err(reason) => prop_assert!(!valid && !reason.is_empty(), "{text:?}: {reason}"),
        }
    }

    #[test]
    fn published_entries_read_back_equal(
        entries in vec((node_id(), addr()), 1..6),
        withdrawn in vec(any::<Index>(), 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        for (node_id, addr) in entries {
            let entry = ServerEntry::new(node_id.clone(), addr);
            registry::publish(dir.path(), &entry).unwrap();
            model.insert(node_id, entry);
        }
        let ids: Vec<String> = model.keys().cloned().collect();
        let mut departed = Vec::new();
        for at in withdrawn {
            let id = at.get(&ids);
            if let Some(entry) = model.remove(id) {
                registry::withdraw(dir.path(), &entry).unwrap();
                departed.push(id.clone());
            }
        }
        departed.sort();
        let read = registry::read(dir.path()).unwrap();
        prop_assert_eq!(read, model.into_values().collect::<Vec<_>>());
        prop_assert_eq!(registry::departed(dir.path()).unwrap(), departed);
    }

    #[test]
    fn read_returns_every_entry_or_names_a_bad_file(
        mut files in btree_map(file_name(), contents(), 0..6),
        published in vec((node_id(), addr()), 0..4),
    ) {
        for (node_id, addr) in published {
            files.insert(format!("{node_id}.addr").into_bytes(), format!("{node_id} {addr}\n").into_bytes());
        }
        let (dir, good, bad) = registry_dir(&files);
        match registry::read(dir.path()) {
            Ok(entries) => {
                prop_assert!(bad.is_empty(), "read past {bad:?}");
                prop_assert!(entries.windows(2).all(|w| w[0].node_id <= w[1].node_id));
                prop_assert_eq!(sorted(entries), good);
            }
            Err(RegistryError::Io { path, .. } | RegistryError::Malformed { path, .. }) => {
                prop_assert!(bad.contains(&path), "{path:?} is not one of {bad:?}");
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

/// Every key of `benchfs.toml`, by section, and one unknown of each.
const KEYS: &[(&str, &[&str])] = &[
    ("node", &["node_id", "data_dir", "log_level", "bogus"]),
    (
        "storage",
        &[
            "backend",
            "chunk_size",
            "o_direct",
            "capacity",
            "queue_depth",
            "orphan_sweep_secs",
            "inline_bytes",
            "use_iouring",
            "max_storage_gb",
        ],
    ),
    (
        "network",
        &[
            "bind_addr",
            "rendezvous_threshold_bytes",
            "rdma_threshold_bytes",
            "registry_dir",
            "rpc_timeout",
            "busy_poll_us",
            "inflight_max",
            "devices",
            "timeout_secs",
        ],
    ),
    (
        "cache",
        &["metadata_cache_entries", "chunk_cache_mb", "cache_ttl_secs"],
    ),
    ("replication", &["replicas"]),
    ("placement", &["virtual_nodes"]),
    ("client", &["write_behind_bytes", "read_ahead_bytes"]),
    ("bogus", &["key"]),
];

/// A `(section, key)` of [`KEYS`].
fn key() -> impl Strategy<Value = (&'static str, &'static str)> {
    select(KEYS).prop_flat_map(|(section, keys)| (Just(section), select(keys)))
}

/// Values near and far from what keys accept.
fn value() -> impl Strategy<Value = toml::Value> {
    let int = prop_oneof![
        any::<i64>(),
        -2i64..70_000,
        (0u32..63).prop_map(|shift| 1i64 << shift),
        Just(i64::MAX),
        Just(i64::MIN),
    ];
    let word = select(
        &[
            "iouring",
            "file",
            "memory",
            "debug",
            "trace",
            "0.0.0.0:50051",
            "[::1]:5",
            "all",
            "eth0",
            "mlx5_0:1",
            "/tmp/x",
            "",
            "node0",
        ][..],
    );
    let leaf = prop_oneof![
        int.prop_map(toml::Value::Integer),
        any::<bool>().prop_map(toml::Value::Boolean),
        word.prop_map(|w| toml::Value::String(w.to_string())),
        "\\PC{0,20}".prop_map(toml::Value::String),
        any::<f64>().prop_map(toml::Value::Float),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A configuration file: keys with values, sometimes with characters inserted at random.
fn config_text() -> impl Strategy<Value = String> {
    let edits = vec((any::<Index>(), "\\PC{0,3}"), 0..3);
    (vec((key(), value()), 0..8), edits).prop_map(|(pairs, edits)| {
        let mut table = toml::Table::new();
        for ((section, key), value) in pairs {
            let section = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = section {
                section.insert(key.to_string(), value);
            }
        }
        let mut text = toml::to_string(&table).unwrap_or_default();
        for (at, insert) in edits {
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            text.insert_str(
                bounds
                    .get(at.index(bounds.len() + 1))
                    .copied()
                    .unwrap_or(text.len()),
                &insert,
            );
        }
        text
    })
}

/// `BENCHFS_*` variables: known keys with values of any kind, and unknown names.
fn env_vars() -> impl Strategy<Value = Vec<(String, String)>> {
    let text = prop_oneof![
        (-2i64..70_000).prop_map(|n| n.to_string()),
        select(&["true", "off", "yes", "2", "a,b,,c", " 4096 ", "all", "file"][..])
            .prop_map(str::to_string),
        "\\PC{0,12}",
    ];
    let name = prop_oneof![
        4 => key().prop_map(|(s, k)| format!("BENCHFS_{s}_{k}").to_ascii_uppercase()),
        1 => "BENCHFS_[A-Z_]{0,20}",
    ];
    vec((name, text), 0..4)
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn config_text_never_panics(
        text in prop_oneof![any::<String>(), "[\\[\\]a-z_=\"'. 0-9\n#{},-]{0,200}"],
    ) {
        if let Ok(c) = ServerConfig::from_toml_str(&text) {
            prop_assert!(c.validate_values().is_ok());
        }
    }

    #[test]
    fn config_files_and_overrides_load_or_name_the_problem(
        text in config_text(),
        vars in env_vars(),
    ) {
        match ServerConfig::from_env_and_str(&text, vars) {
            Ok(c) => prop_assert!(c.validate_values().is_ok(), "{c:?}"),
            Err(ConfigError::Invalid { key, reason }) => {
                prop_assert!(KEYS.iter().any(|(s, keys)| keys.iter().any(|k| key == format!("{s}.{k}"))), "{key}: {reason}");
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
