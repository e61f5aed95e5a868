//! Store faults: every server's chunk store fails about one operation in six to twelve by a
//! seeded plan (`storage.inject_faults`: EIO, ENOSPC, a write torn half way, a delay).
//! With two replicas, whatever a call acknowledged reads back exactly, a call that failed
//! said so with EIO or ENOSPC, and a read never answers a byte that no call wrote there.
//! And a disk that goes read-only under a server still serves what it holds.

mod common;

use benchfs::blocking::{ApiError, BenchFS, OpenFlags};
use common::disk::Ext4Disk;
use common::files::{read_file, stats, write_file};
use common::{note, pattern, Cluster, ClusterSpec};

/// Each plan is one cluster's run.
const PLANS: [&str; 3] = [
    "seed=11,every=12,kinds=io+nospace+torn+slow,slow_ms=5",
    "seed=22,every=12,kinds=io+torn",
    "seed=33,every=6,kinds=io+nospace+torn+slow,slow_ms=1",
];
const FILES: usize = 16;
/// Reads of an acknowledged file retried while injected faults hit both replicas.
const READ_TRIES: usize = 30;

/// What a file may hold: `data` for sure, or at some offsets `other` (a failed call's
/// bytes, or what they would have replaced).
struct Expect {
    data: Vec<u8>,
    other: Option<Vec<u8>>,
}

impl Expect {
    fn allows(&self, at: usize, byte: u8) -> bool {
        let of = |v: &Vec<u8>| v.get(at).copied().unwrap_or(0);
        byte == of(&self.data) || self.other.as_ref().is_some_and(|o| byte == of(o))
    }
}

fn pwrite_and_close(
    fs: &BenchFS,
    path: &str,
    flags: OpenFlags,
    data: &[u8],
    at: u64,
) -> Result<(), ApiError> {
    let fd = fs.open(path, flags, 0o644)?;
    let written = fs.pwrite(fd, data, at);
    let closed = fs.close(fd);
    written.and(closed)
}

fn check_failure(what: &str, e: &ApiError) {
    assert!(
        [libc::EIO, libc::ENOSPC].contains(&e.errno()),
        "{what}: an injected store fault must come back as EIO or ENOSPC: {e}"
    );
}

/// Reads `path` whole (retrying calls that failed) and checks every byte.
fn check(fs: &BenchFS, path: &str, expect: &Expect, sure: bool) {
    for _ in 0..READ_TRIES {
        match common::files::try_read_file(fs, path) {
            Ok(got) => {
                if sure {
                    assert!(got == expect.data, "{path}: acknowledged bytes differ");
                }
                if let Some(at) = (0..got.len()).find(|&i| !expect.allows(i, got[i])) {
                    panic!(
                        "{path}: byte {at} is {:#x}, which no call wrote there",
                        got[at]
                    );
                }
                return;
            }
            Err(e) if !sure && e.errno() == libc::ENOENT => return,
            Err(e) => check_failure(&format!("read {path}"), &e),
        }
    }
    panic!("{path}: {READ_TRIES} reads in a row failed");
}

#[test]
fn store_faults_never_become_wrong_bytes() {
    for plan in PLANS {
        run(plan);
    }
}

fn run(plan: &'static str) {
    let cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        backend: "file",
        inject_faults: Some(plan),
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    let create = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNC;
    let mut files = Vec::new();
    let mut failed = 0;
    for i in 0..FILES {
        let path = format!("/f{i}");
        let data = pattern(20_000 + i * 23_000, i as u64);
        let (expect, sure) = match pwrite_and_close(&fs, &path, create, &data, 0) {
            Ok(()) => (Expect { data, other: None }, true),
            Err(e) => {
                check_failure(&format!("create {path}"), &e);
                failed += 1;
                (
                    Expect {
                        data: Vec::new(),
                        other: Some(data),
                    },
                    false,
                )
            }
        };
        files.push((path, expect, sure));
    }
    // Overwrite the middle of every file that certainly exists.
    for (i, (path, expect, sure)) in files.iter_mut().enumerate() {
        if !*sure {
            continue;
        }
        let at = expect.data.len() / 3;
        let patch = pattern(expect.data.len() / 2, 100 + i as u64);
        let mut new = expect.data.clone();
        if new.len() < at + patch.len() {
            new.resize(at + patch.len(), 0);
        }
        new[at..at + patch.len()].copy_from_slice(&patch);
        match pwrite_and_close(&fs, path, OpenFlags::WRITE, &patch, at as u64) {
            Ok(()) => expect.data = new,
            Err(e) => {
                check_failure(&format!("overwrite {path}"), &e);
                failed += 1;
                expect.other = Some(new);
                *sure = false;
            }
        }
    }
    for (path, expect, sure) in &files {
        check(&cluster.client(), path, expect, *sure);
    }
    let injected: u64 = stats(&fs).iter().map(|s| s.faults_injected).sum();
    let sure = files.iter().filter(|(_, _, sure)| *sure).count();
    note(&format!(
        "{plan}: {injected} faults injected, {failed} calls failed, {sure} files sure"
    ));
    assert!(injected > 0, "{plan}: nothing injected");
    assert!(sure > 0, "{plan}: no file to check exactly");
}

/// Files written before the disk goes read-only: more chunks than a server keeps open
/// (256 descriptors), so reads must open chunk files again afterwards.
const READ_ONLY_FILES: usize = 20;

/// A server on an ext4 disk that an error turns read-only (`errors=remount-ro`, Debian's
/// default), for each disk backend: every file it acknowledged before still reads back
/// whole, a new file or a change fails as EROFS naming the path and the server, and the
/// server stays up.
#[test]
fn a_disk_gone_read_only_serves_what_it_holds_and_refuses_changes() {
    for backend in ["file", "iouring", "tiered"] {
        let mut cluster = Cluster::start(ClusterSpec {
            servers: 0,
            backend,
            ..ClusterSpec::default()
        });
        if backend == "tiered" {
            // A memory tier of 8 chunks: most chunks live on the disk.
            let text = std::fs::read_to_string(&cluster.config_path).unwrap();
            let tier = format!(
                "memory_tier_bytes = {}\n[network]",
                8 * cluster.spec.chunk_size
            );
            std::fs::write(&cluster.config_path, text.replacen("[network]", &tier, 1)).unwrap();
        }
        let Some(disk) = Ext4Disk::mount(&cluster.data_dir(0), 64) else {
            return;
        };
        cluster.spec.servers = 1;
        cluster.children.push(None);
        cluster.restart(0);
        assert!(cluster.is_running(0), "{backend}: server did not start");
        let fs = cluster.client();
        let file_bytes = 16 * cluster.spec.chunk_size as usize;
        let files: Vec<(String, Vec<u8>)> = (0..READ_ONLY_FILES)
            .map(|i| (format!("/f{i}"), pattern(file_bytes, i as u64)))
            .collect();
        for (path, data) in &files {
            write_file(&fs, path, data);
        }
        disk.fail();
        if std::fs::read_dir(cluster.data_dir(0)).is_err() {
            // Some kernels (about 6.6 to 6.14) shut an ext4 down after an error instead of
            // making it read-only: nothing on it reads.
            common::skip(
                "a disk gone read-only",
                "this kernel shuts ext4 down on an error",
            );
            return;
        }

        for (path, data) in &files {
            assert!(
                read_file(&fs, path) == *data,
                "{backend}: {path} reads back other bytes"
            );
        }
        let refused = |what: &str, e: ApiError, path: &str| {
            assert_eq!(e.errno(), libc::EROFS, "{backend}: {what}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(path) && text.contains("node0@") && text.contains("read-only"),
                "{backend}: {what}: the error names the path, the server and the cause: {text}"
            );
        };
        let created = fs
            .open("/new", OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
            .and_then(|fd| {
                let written = fs.pwrite(fd, &pattern(file_bytes, 99), 0).map(|_| ());
                written.and(fs.close(fd))
            });
        refused("create", created.unwrap_err(), "/new");
        let (path, _) = &files[0];
        let changed = pwrite_and_close(&fs, path, OpenFlags::WRITE, &pattern(file_bytes, 7), 0);
        refused("overwrite", changed.unwrap_err(), path);
        // What failed changed nothing that reads.
        for (path, data) in &files[1..] {
            assert!(read_file(&fs, path) == *data, "{backend}: {path} changed");
        }
        assert!(cluster.is_running(0), "{backend}: the server stays up");
        drop(fs);
        drop(cluster);
        drop(disk);
    }
}
