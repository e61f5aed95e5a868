//! End-to-end tests: real benchfsd processes, real UCX, a real client.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benchfs::api::{BenchFS, OpenFlags, Whence};
use benchfs_proto::meta::EntryKind;
use benchfs_proto::ops::READDIR_PAGE_MAX;
use common::{
    errno_of, pattern, read_file, stats, try_read_file, write_file, Cluster, ClusterSpec,
};

/// The chunk size every test cluster uses (`ClusterSpec::default`).
const CHUNK: u64 = 64 * 1024;
const C: usize = CHUNK as usize;

/// Sizes that sit on and around chunk boundaries, plus one large enough (16 chunks of
/// 64 KiB, each above the 32 KiB threshold) to move by rendezvous.
const SIZES: [usize; 7] = [0, 1, C - 1, C, C + 1, 3 * C + 17, (1 << 20) + 5];

#[test]
fn write_close_open_read_round_trip() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let data = pattern(300_000, 1);
    let fd = fs.create("/f", 0o644).unwrap();
    assert_eq!(fs.write(fd, &data).unwrap(), data.len());
    fs.close(fd).unwrap();
    let fd = fs.open("/f", OpenFlags::READ, 0).unwrap();
    let mut buf = vec![0u8; data.len() + 10];
    assert_eq!(fs.read(fd, &mut buf).unwrap(), data.len());
    assert_eq!(&buf[..data.len()], &data[..]);
    fs.close(fd).unwrap();
    assert_eq!(fs.stat("/f").unwrap().size, data.len() as u64);
}

#[test]
fn files_straddling_chunk_boundaries_round_trip() {
    let cluster = Cluster::start(ClusterSpec::default());
    let writer = cluster.client();
    let reader = cluster.client();
    for (i, &len) in SIZES.iter().enumerate() {
        let data = pattern(len, 100 + i as u64);
        // One write call: whole chunks at once (rendezvous above 32 KiB).
        let whole = format!("/whole{len}");
        write_file(&writer, &whole, &data);
        // Many small writes at odd sizes: partial chunks, eager messages.
        let pieces = format!("/pieces{len}");
        let fd = writer.create(&pieces, 0o644).unwrap();
        for piece in data.chunks(7919) {
            assert_eq!(writer.write(fd, piece).unwrap(), piece.len());
        }
        writer.close(fd).unwrap();
        for path in [&whole, &pieces] {
            assert_eq!(reader.stat(path).unwrap().size, len as u64, "{path}");
            assert!(
                read_file(&reader, path) == data,
                "{path} read back differently"
            );
        }
    }
}

#[test]
fn pwrite_pread_at_odd_offsets() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let mut model = pattern(3 * C + 17, 7);
    write_file(&fs, "/p", &model);
    let fd = fs.open("/p", OpenFlags::RDWR, 0).unwrap();
    // (offset, len): inside a chunk, across one boundary, across two, and past the end.
    let writes = [
        (5, 3),
        (C - 5, 10),
        (C + 1, 2 * C),
        (2 * C - 1, 1),
        (3 * C + 10, 100),
        (4 * C + 3, C + 9),
    ];
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let data = pattern(len, 1000 + i as u64);
        assert_eq!(fs.pwrite(fd, &data, offset as u64).unwrap(), len);
        if model.len() < offset + len {
            model.resize(offset + len, 0);
        }
        model[offset..offset + len].copy_from_slice(&data);
    }
    assert_eq!(fs.fstat(fd).unwrap().size, model.len() as u64);
    for &(offset, len) in &[
        (0, model.len()),
        (1, C),
        (C - 1, 2),
        (2 * C + 7, C * 2),
        (model.len() - 3, 10),
    ] {
        let mut buf = vec![0xAAu8; len];
        let n = fs.pread(fd, &mut buf, offset as u64).unwrap();
        let want = &model[offset..(offset + len).min(model.len())];
        assert_eq!(n, want.len(), "pread({offset}, {len})");
        assert!(
            &buf[..n] == want,
            "pread({offset}, {len}) returned other bytes"
        );
    }
    let mut buf = [0u8; 8];
    assert_eq!(fs.pread(fd, &mut buf, model.len() as u64).unwrap(), 0);
    assert_eq!(
        fs.pread(fd, &mut buf, model.len() as u64 + CHUNK).unwrap(),
        0
    );
    fs.close(fd).unwrap();
    let other = cluster.client();
    assert!(read_file(&other, "/p") == model);
}

#[test]
fn reopen_sees_data_written_since_with_chunk_cache_on() {
    // A reader with the chunk cache on kept serving the chunks it had cached before another
    // client rewrote the file and closed it, even after opening the file again, breaking
    // close-to-open consistency.
    let cluster = Cluster::start(ClusterSpec::default());
    let writer = cluster.client();
    let mut config = cluster.config();
    config.cache.chunk_cache_mb = 64;
    let reader = BenchFS::connect(&config).unwrap();
    let old = pattern(2 * C + 9, 30);
    write_file(&writer, "/c", &old);
    assert!(read_file(&reader, "/c") == old);
    let new = pattern(2 * C + 9, 31);
    let fd = writer.open("/c", OpenFlags::WRITE, 0).unwrap();
    writer.write(fd, &new).unwrap();
    writer.close(fd).unwrap();
    assert!(
        read_file(&reader, "/c") == new,
        "reopen served stale cached chunks"
    );
}

#[test]
fn seek_start_current_end() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let data = pattern(2 * C + 100, 8);
    write_file(&fs, "/s", &data);
    let fd = fs.open("/s", OpenFlags::RDWR, 0).unwrap();
    let size = data.len() as u64;
    let mut buf = vec![0u8; 40];
    assert_eq!(
        fs.seek(fd, CHUNK as i64 - 10, Whence::Start).unwrap(),
        CHUNK - 10
    );
    assert_eq!(fs.read(fd, &mut buf[..20]).unwrap(), 20);
    assert_eq!(&buf[..20], &data[C - 10..C + 10]);
    assert_eq!(fs.seek(fd, -30, Whence::Current).unwrap(), CHUNK - 20);
    assert_eq!(fs.read(fd, &mut buf[..5]).unwrap(), 5);
    assert_eq!(&buf[..5], &data[C - 20..C - 15]);
    assert_eq!(fs.seek(fd, 0, Whence::Current).unwrap(), CHUNK - 15);
    assert_eq!(fs.seek(fd, -17, Whence::End).unwrap(), size - 17);
    assert_eq!(fs.read(fd, &mut buf).unwrap(), 17);
    assert_eq!(&buf[..17], &data[data.len() - 17..]);
    assert_eq!(fs.read(fd, &mut buf).unwrap(), 0);
    assert_eq!(
        errno_of(fs.seek(fd, -(size as i64) - 1, Whence::End)),
        libc::EINVAL
    );
    assert_eq!(errno_of(fs.seek(fd, -1, Whence::Start)), libc::EINVAL);
    // Seeking past the end and writing leaves a hole.
    assert_eq!(fs.seek(fd, 10, Whence::End).unwrap(), size + 10);
    assert_eq!(fs.write(fd, b"tail").unwrap(), 4);
    fs.close(fd).unwrap();
    let mut want = data.clone();
    want.extend_from_slice(&[0; 10]);
    want.extend_from_slice(b"tail");
    assert!(read_file(&cluster.client(), "/s") == want);
}

#[test]
fn append_writes_at_the_end() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let head = pattern(C - 3, 9);
    write_file(&fs, "/a", &head);
    let fd = fs
        .open("/a", OpenFlags::WRITE | OpenFlags::APPEND, 0)
        .unwrap();
    assert_eq!(fs.write(fd, b"0123456789").unwrap(), 10);
    // The position does not matter with APPEND.
    fs.seek(fd, 0, Whence::Start).unwrap();
    assert_eq!(fs.write(fd, b"abc").unwrap(), 3);
    fs.close(fd).unwrap();
    // A second handle appends after what the first published.
    let fd = fs.open("/a", OpenFlags::APPEND, 0).unwrap();
    assert_eq!(fs.write(fd, b"XYZ").unwrap(), 3);
    fs.close(fd).unwrap();
    let mut want = head;
    want.extend_from_slice(b"0123456789abcXYZ");
    assert!(read_file(&cluster.client(), "/a") == want);
}

#[test]
fn sparse_writes_read_zeros_in_holes() {
    sparse_writes(ClusterSpec::default());
}

#[test]
fn sparse_writes_read_zeros_in_holes_file_backend() {
    sparse_writes(ClusterSpec {
        backend: "file",
        ..ClusterSpec::default()
    });
}

fn sparse_writes(spec: ClusterSpec) {
    let cluster = Cluster::start(spec);
    let fs = cluster.client();
    let data = pattern(100, 11);
    let offset = 5 * C + 3;
    let fd = fs.create("/sparse", 0o644).unwrap();
    assert_eq!(fs.pwrite(fd, &data, offset as u64).unwrap(), data.len());
    fs.close(fd).unwrap();
    let reader = cluster.client();
    assert_eq!(
        reader.stat("/sparse").unwrap().size,
        (offset + data.len()) as u64
    );
    let got = read_file(&reader, "/sparse");
    assert_eq!(got.len(), offset + data.len());
    assert!(
        got[..offset].iter().all(|&b| b == 0),
        "the hole before the data is not zeros"
    );
    assert!(got[offset..] == data[..]);

    // A hole inside one chunk, between two writes to it.
    let fd = fs.create("/holey", 0o644).unwrap();
    fs.pwrite(fd, b"first", CHUNK + 10).unwrap();
    fs.pwrite(fd, b"second", CHUNK + 1000).unwrap();
    fs.close(fd).unwrap();
    let got = read_file(&reader, "/holey");
    assert_eq!(got.len(), C + 1006);
    assert!(got[..C + 10].iter().all(|&b| b == 0));
    assert_eq!(&got[C + 10..C + 15], b"first");
    assert!(
        got[C + 15..C + 1000].iter().all(|&b| b == 0),
        "the hole inside the chunk is not zeros"
    );
    assert_eq!(&got[C + 1000..], b"second");
}

#[test]
fn truncate_shrink_grow_and_trunc_flag() {
    truncate_checks(ClusterSpec::default());
}

#[test]
fn truncate_shrink_grow_and_trunc_flag_file_backend() {
    truncate_checks(ClusterSpec {
        backend: "file",
        ..ClusterSpec::default()
    });
}

fn truncate_checks(spec: ClusterSpec) {
    let cluster = Cluster::start(spec);
    let fs = cluster.client();
    let data = pattern(4 * C + 100, 12);
    write_file(&fs, "/t", &data);
    let cut = C + C / 2;
    fs.truncate("/t", cut as u64).unwrap();
    assert_eq!(fs.stat("/t").unwrap().size, cut as u64);
    assert!(read_file(&fs, "/t") == data[..cut]);
    // Growing again: the bytes past the old cut read as zeros, not as the old data.
    let grown = 3 * C + 5;
    fs.truncate("/t", grown as u64).unwrap();
    let reader = cluster.client();
    assert_eq!(reader.stat("/t").unwrap().size, grown as u64);
    let got = read_file(&reader, "/t");
    assert_eq!(got.len(), grown);
    assert!(got[..cut] == data[..cut]);
    assert!(
        got[cut..].iter().all(|&b| b == 0),
        "old data showed through after shrink and grow"
    );

    fs.truncate("/t", 0).unwrap();
    assert_eq!(cluster.client().stat("/t").unwrap().size, 0);
    assert!(read_file(&reader, "/t").is_empty());
    fs.truncate("/t", CHUNK + 1).unwrap();
    assert!(read_file(&reader, "/t") == vec![0; C + 1]);

    // A cut exactly on a chunk boundary keeps the chunk before it whole.
    write_file(&fs, "/edge", &data);
    fs.truncate("/edge", 2 * CHUNK).unwrap();
    fs.truncate("/edge", 3 * CHUNK).unwrap();
    let got = read_file(&reader, "/edge");
    assert!(got[..2 * C] == data[..2 * C]);
    assert!(
        got[2 * C..].iter().all(|&b| b == 0),
        "old data past a chunk-aligned cut"
    );
    // Writing past a cut does not bring the old bytes in between back.
    fs.truncate("/edge", 10).unwrap();
    let fd = fs.open("/edge", OpenFlags::WRITE, 0).unwrap();
    fs.pwrite(fd, b"z", 2 * CHUNK + 1).unwrap();
    fs.close(fd).unwrap();
    let got = read_file(&reader, "/edge");
    assert_eq!(got.len(), 2 * C + 2);
    assert!(got[..10] == data[..10]);
    assert!(
        got[10..2 * C + 1].iter().all(|&b| b == 0),
        "old data came back after a write past the cut"
    );
    assert_eq!(got[2 * C + 1], b'z');

    // Truncating a file this client has open counts its unpublished writes.
    let fd = fs.create("/open", 0o644).unwrap();
    fs.write(fd, &data[..2 * C]).unwrap();
    fs.truncate("/open", CHUNK - 1).unwrap();
    fs.close(fd).unwrap();
    assert_eq!(cluster.client().stat("/open").unwrap().size, CHUNK - 1);
    assert!(read_file(&reader, "/open") == data[..C - 1]);

    // TRUNC on open empties the file and its chunks.
    write_file(&fs, "/tf", &data);
    let fd = fs
        .open("/tf", OpenFlags::WRITE | OpenFlags::TRUNC, 0)
        .unwrap();
    assert_eq!(fs.fstat(fd).unwrap().size, 0);
    fs.pwrite(fd, b"end", 2 * CHUNK).unwrap();
    fs.close(fd).unwrap();
    let got = read_file(&reader, "/tf");
    assert_eq!(got.len(), 2 * C + 3);
    assert!(
        got[..2 * C].iter().all(|&b| b == 0),
        "TRUNC left old data behind"
    );
    assert_eq!(&got[2 * C..], b"end");
    // TRUNC without write access leaves the file alone.
    let fd = fs
        .open("/tf", OpenFlags::READ | OpenFlags::TRUNC, 0)
        .unwrap();
    fs.close(fd).unwrap();
    assert_eq!(cluster.client().stat("/tf").unwrap().size, 2 * CHUNK + 3);
}

#[test]
fn concurrent_clients_on_distinct_files() {
    let cluster = Cluster::start(ClusterSpec::default());
    let threads = 4;
    // One config for all threads: loading it in each thread at once trips the data_dir
    // write probe in ServerConfig::validate, whose name is per process, not per thread.
    let config = cluster.config();
    std::thread::scope(|s| {
        for t in 0..threads {
            let config = &config;
            s.spawn(move || {
                let fs = BenchFS::connect(config).unwrap();
                for round in 0..3 {
                    let path = format!("/t{t}-{round}");
                    let data = pattern(2 * C + 1234 * t + round, (t * 10 + round) as u64);
                    write_file(&fs, &path, &data);
                    assert!(read_file(&fs, &path) == data, "{path}");
                }
            });
        }
    });
    let fs = cluster.client();
    for t in 0..threads {
        for round in 0..3 {
            let path = format!("/t{t}-{round}");
            assert!(
                read_file(&fs, &path) == pattern(2 * C + 1234 * t + round, (t * 10 + round) as u64),
                "{path}"
            );
        }
    }
}

#[test]
fn concurrent_clients_on_one_file_disjoint_ranges() {
    let cluster = Cluster::start(ClusterSpec::default());
    let threads = 4;
    // Ranges that do not line up with chunks, so neighbours share a chunk.
    let range = C + 333;
    // One config for all threads: loading it in each thread at once trips the data_dir
    // write probe in ServerConfig::validate, whose name is per process, not per thread.
    let config = cluster.config();
    std::thread::scope(|s| {
        for t in 0..threads {
            let config = &config;
            s.spawn(move || {
                let fs = BenchFS::connect(config).unwrap();
                let fd = fs
                    .open("/shared", OpenFlags::CREATE | OpenFlags::WRITE, 0o644)
                    .unwrap();
                // Write the range in odd pieces, last piece first, so sizes grow out of order.
                let data = pattern(range, 500 + t as u64);
                let base = t * range;
                let pieces: Vec<_> = (0..range).step_by(10_007).collect();
                for &at in pieces.iter().rev() {
                    let end = (at + 10_007).min(range);
                    fs.pwrite(fd, &data[at..end], (base + at) as u64).unwrap();
                }
                fs.close(fd).unwrap();
            });
        }
    });
    let fs = cluster.client();
    assert_eq!(fs.stat("/shared").unwrap().size, (threads * range) as u64);
    let got = read_file(&fs, "/shared");
    assert_eq!(got.len(), threads * range);
    for t in 0..threads {
        assert!(
            got[t * range..(t + 1) * range] == pattern(range, 500 + t as u64)[..],
            "range of thread {t} differs"
        );
    }
}

#[test]
fn readdir_spans_every_server_and_pages() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    fs.mkdir("/d", 0o755).unwrap();
    let before = stats(&fs);
    // Enough entries that some server holds more than one page of them.
    let count = 640;
    let mut want = BTreeMap::new();
    for i in 0..count {
        let name = format!("e{:04}-{}", (i * 7919) % 10_000, i);
        let path = format!("/d/{name}");
        if i % 5 == 0 {
            fs.mkdir(&path, 0o755).unwrap();
            want.insert(name, (EntryKind::Directory, 0));
        } else {
            write_file(&fs, &path, &pattern(i % 7, i as u64));
            want.insert(name, ((EntryKind::File), (i % 7) as u64));
        }
    }
    let entries = cluster.client().readdir("/d").unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "readdir is not sorted");
    let got: BTreeMap<_, _> = entries
        .iter()
        .map(|e| (e.name.clone(), (e.meta.kind, e.meta.size)))
        .collect();
    assert_eq!(got.len(), entries.len(), "readdir returned a name twice");
    assert_eq!(got, want);

    let after = stats(&fs);
    let landed: Vec<u64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.metadata_records - b.metadata_records)
        .collect();
    assert_eq!(landed.iter().sum::<u64>(), count as u64);
    assert!(
        landed.iter().all(|&n| n > 0),
        "some server holds no entry: {landed:?}"
    );
    assert!(
        landed.iter().any(|&n| n > READDIR_PAGE_MAX as u64),
        "no server needed a second page: {landed:?}"
    );

    assert!(fs.readdir("/d/e0000-0").unwrap().is_empty());
    assert_eq!(errno_of(fs.readdir("/d/e7919-1")), libc::ENOTDIR);
    assert_eq!(errno_of(fs.readdir("/missing")), libc::ENOENT);
    let root: Vec<_> = fs
        .readdir("/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, ["d"]);
}

#[test]
fn namespace_errors_have_the_right_errno() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    write_file(&fs, "/file", b"x");
    fs.mkdir("/dir", 0o755).unwrap();
    fs.mkdir("/full", 0o755).unwrap();
    write_file(&fs, "/full/child", b"y");

    assert_eq!(
        errno_of(fs.open("/missing", OpenFlags::READ, 0)),
        libc::ENOENT
    );
    assert_eq!(errno_of(fs.stat("/missing")), libc::ENOENT);
    assert_eq!(errno_of(fs.create("/nodir/f", 0o644)), libc::ENOENT);
    assert_eq!(errno_of(fs.mkdir("/nodir/d", 0o755)), libc::ENOENT);
    assert_eq!(errno_of(fs.unlink("/missing")), libc::ENOENT);
    assert_eq!(errno_of(fs.rmdir("/missing")), libc::ENOENT);
    assert_eq!(errno_of(fs.truncate("/missing", 0)), libc::ENOENT);

    assert_eq!(errno_of(fs.mkdir("/dir", 0o755)), libc::EEXIST);
    assert_eq!(errno_of(fs.mkdir("/file", 0o755)), libc::EEXIST);
    assert_eq!(errno_of(fs.mkdir("/", 0o755)), libc::EEXIST);
    let excl = OpenFlags::CREATE | OpenFlags::EXCL | OpenFlags::WRITE;
    assert_eq!(errno_of(fs.open("/file", excl, 0o644)), libc::EEXIST);
    assert_eq!(errno_of(fs.open("/dir", excl, 0o644)), libc::EEXIST);
    let fd = fs.open("/new", excl, 0o644).unwrap();
    fs.close(fd).unwrap();

    assert_eq!(errno_of(fs.create("/file/x", 0o644)), libc::ENOTDIR);
    assert_eq!(errno_of(fs.mkdir("/file/x", 0o755)), libc::ENOTDIR);
    assert_eq!(errno_of(fs.rmdir("/file")), libc::ENOTDIR);
    assert_eq!(errno_of(fs.readdir("/file")), libc::ENOTDIR);

    assert_eq!(errno_of(fs.unlink("/dir")), libc::EISDIR);
    assert_eq!(errno_of(fs.open("/dir", OpenFlags::WRITE, 0)), libc::EISDIR);
    assert_eq!(
        errno_of(fs.open("/dir", OpenFlags::CREATE | OpenFlags::WRITE, 0o644)),
        libc::EISDIR
    );
    assert_eq!(errno_of(fs.truncate("/dir", 0)), libc::EISDIR);

    assert_eq!(errno_of(fs.rmdir("/full")), libc::ENOTEMPTY);

    let name255 = "n".repeat(255);
    fs.mkdir(&format!("/{name255}"), 0o755).unwrap();
    assert_eq!(
        errno_of(fs.create(&format!("/{}", "n".repeat(256)), 0o644)),
        libc::ENAMETOOLONG
    );
    let long = format!("/{name255}").repeat(16);
    assert!(long.len() > 4095);
    assert_eq!(errno_of(fs.create(&long, 0o644)), libc::ENAMETOOLONG);

    for bad in ["", "relative", "/a/../b", "/..", "/a\0b"] {
        assert_eq!(errno_of(fs.create(bad, 0o644)), libc::EINVAL, "{bad:?}");
    }

    // The failures above changed nothing.
    assert!(fs.stat("/dir").unwrap().is_dir());
    assert_eq!(read_file(&fs, "/file"), b"x");
    assert_eq!(read_file(&fs, "/full/child"), b"y");
    fs.unlink("/full/child").unwrap();
    fs.rmdir("/full").unwrap();
    assert_eq!(errno_of(fs.stat("/full")), libc::ENOENT);
}

#[test]
fn rename_files_and_directories() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let chunks = |fs: &BenchFS| stats(fs).iter().map(|s| s.chunks).sum::<u64>();
    let a = pattern(3 * C + 5, 20);
    let b = pattern(2 * C, 21);
    write_file(&fs, "/a", &a);
    write_file(&fs, "/b", &b);
    assert_eq!(chunks(&fs), 6);

    fs.rename("/a", "/a2").unwrap();
    assert_eq!(errno_of(fs.stat("/a")), libc::ENOENT);
    assert!(read_file(&cluster.client(), "/a2") == a);

    // Over an existing file: the target's old chunks go away.
    fs.rename("/a2", "/b").unwrap();
    let reader = cluster.client();
    assert_eq!(errno_of(cluster.client().stat("/a2")), libc::ENOENT);
    assert!(read_file(&reader, "/b") == a);
    assert_eq!(chunks(&fs), 4);

    fs.mkdir("/dir", 0o755).unwrap();
    fs.rename("/b", "/dir/b").unwrap();
    assert!(read_file(&reader, "/dir/b") == a);
    assert_eq!(errno_of(cluster.client().stat("/b")), libc::ENOENT);
    let names: Vec<_> = reader
        .readdir("/dir")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["b"]);

    fs.mkdir("/empty", 0o755).unwrap();
    fs.rename("/empty", "/empty2").unwrap();
    assert!(reader.stat("/empty2").unwrap().is_dir());
    assert_eq!(errno_of(cluster.client().stat("/empty")), libc::ENOENT);

    assert_eq!(errno_of(fs.rename("/dir", "/dir2")), libc::EOPNOTSUPP);
    assert_eq!(read_file(&reader, "/dir/b").len(), a.len());
    assert_eq!(errno_of(fs.rename("/dir/b", "/nodir/b")), libc::ENOENT);
    assert_eq!(errno_of(fs.rename("/missing", "/x")), libc::ENOENT);
    assert_eq!(errno_of(fs.rename("/dir/b", "/empty2")), libc::EISDIR);
    assert_eq!(errno_of(fs.rename("/empty2", "/dir/b")), libc::ENOTDIR);
    assert_eq!(errno_of(fs.rename("/empty2", "/empty2/sub")), libc::EINVAL);
    assert!(read_file(&reader, "/dir/b") == a);
    assert_eq!(chunks(&fs), 4);
}

/// Writes a set of files whose sizes straddle chunks; returns (path, contents).
fn write_fixture_files(fs: &BenchFS, tag: u64) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        let path = format!("/r{tag}-{i}");
        let data = pattern(len, tag * 100 + i as u64);
        write_file(fs, &path, &data);
        files.push((path, data));
    }
    fs.mkdir(&format!("/rdir{tag}"), 0o755).unwrap();
    let path = format!("/rdir{tag}/inner");
    let data = pattern(C + 7, tag);
    write_file(fs, &path, &data);
    files.push((path, data));
    files
}

fn check_files(fs: &BenchFS, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        assert_eq!(fs.stat(path).unwrap().size, data.len() as u64, "{path}");
        assert!(read_file(fs, path) == *data, "{path} read back differently");
    }
}

/// Stops (SIGTERM) and then kills (SIGKILL) every server in turn, restarting it on its data
/// directory, and checks every closed file after each round.
fn restart_keeps_data(spec: ClusterSpec) {
    let backend = spec.backend;
    let mut cluster = match Cluster::try_start(spec) {
        Ok(c) => c,
        Err(e) if backend == "iouring" => {
            common::skip(
                "restart test on iouring",
                &format!("the cluster did not start (io_uring unavailable?): {e}"),
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let old = cluster.client();
    let mut files = write_fixture_files(&old, 1);
    for i in 0..cluster.spec.servers {
        assert!(
            cluster.stop(i),
            "server {i} did not exit 0 on SIGTERM; see {}",
            cluster.log_path(i).display()
        );
        cluster.restart(i);
    }
    let fs = cluster.client();
    check_files(&fs, &files);
    // New files after the restart must not reuse the ids (and so the chunks) of old ones.
    files.extend(write_fixture_files(&fs, 2));
    check_files(&fs, &files);
    drop(fs);

    for i in 0..cluster.spec.servers {
        cluster.kill(i);
        cluster.restart(i);
    }
    let fs = cluster.client();
    check_files(&fs, &files);
    files.extend(write_fixture_files(&fs, 3));
    check_files(&cluster.client(), &files);
    // A client connected before every restart finds the servers again.
    check_files(&old, &files);
}

#[test]
fn a_client_idle_across_server_restarts_keeps_working() {
    // A client that sat idle while a server restarted sent its next request down the dead
    // connection and failed with ETIMEDOUT after the whole RPC timeout, instead of
    // reconnecting to the restarted server.
    let mut cluster = Cluster::start(ClusterSpec {
        backend: "file",
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    let files = write_fixture_files(&fs, 1);
    assert!(cluster.stop(1));
    cluster.restart(1);
    cluster.kill(2);
    cluster.restart(2);
    for (path, data) in &files {
        match try_read_file(&fs, path) {
            Ok(got) => assert!(got == *data, "{path} read back differently"),
            Err(e) => panic!("{path}: {e}"),
        }
    }
    let data = pattern(C + 1, 2);
    write_file(&fs, "/new", &data);
    assert!(read_file(&cluster.client(), "/new") == data);
}

#[test]
fn restart_keeps_data_file_backend() {
    restart_keeps_data(ClusterSpec {
        backend: "file",
        ..ClusterSpec::default()
    });
}

#[test]
fn restart_keeps_data_iouring_backend() {
    restart_keeps_data(ClusterSpec {
        backend: "iouring",
        ..ClusterSpec::default()
    });
}

#[test]
fn reads_fail_over_to_a_replica() {
    let mut cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        rpc_timeout_ms: 1500,
        ..ClusterSpec::default()
    });
    let old = cluster.client();
    let files = write_fixture_files(&old, 1);
    check_files(&old, &files);
    cluster.kill(1);
    check_files(&cluster.client(), &files);
    check_files(&old, &files);
}

#[test]
fn reads_from_a_dead_server_fail_without_hanging() {
    let timeout = Duration::from_millis(1500);
    let mut cluster = Cluster::start(ClusterSpec {
        replicas: 1,
        rpc_timeout_ms: timeout.as_millis() as u64,
        ..ClusterSpec::default()
    });
    let files = write_fixture_files(&cluster.client(), 1);
    cluster.kill(2);
    let fs = cluster.client();
    let mut failed = 0;
    for (path, data) in &files {
        let start = Instant::now();
        let result = try_read_file(&fs, path);
        let took = start.elapsed();
        // A liveness bound, not a timing assertion: a hang would take forever.
        assert!(
            took < timeout + Duration::from_secs(5),
            "{path}: took {took:?}"
        );
        match result {
            Ok(got) => assert!(got == *data, "{path} read back differently"),
            Err(e) => {
                assert!(
                    [libc::EIO, libc::ETIMEDOUT].contains(&e.errno()),
                    "{path}: {e} (errno {})",
                    e.errno()
                );
                failed += 1;
            }
        }
    }
    // The 1 MiB file has 16 chunks spread over all four servers.
    assert!(failed > 0, "no read touched the dead server");
    // Once the server is back (it is in-memory, so its share is gone), the same client
    // works again: creating, writing and reading a new file touches every server.
    cluster.restart(2);
    let data = pattern(1 << 20, 77);
    write_file(&fs, "/after-restart", &data);
    assert!(read_file(&fs, "/after-restart") == data);
    assert_eq!(stats(&fs).len(), 4);
}

#[test]
fn a_write_to_a_stalled_server_fails_in_time_and_the_client_recovers() {
    // The blocking API lends the caller's slice to UCX without a copy and must not return
    // while a send still reads it. A server that is alive but stopped never completes a
    // rendezvous send, so the call has to give up on the connection at the timeout.
    let timeout = Duration::from_millis(1500);
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 1,
        rpc_timeout_ms: timeout.as_millis() as u64,
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    let fd = fs.create("/stalled", 0o644).unwrap();
    let first = pattern(8 * C, 1);
    assert_eq!(fs.pwrite(fd, &first, 0).unwrap(), first.len());

    cluster.signal(0, "STOP");
    let start = Instant::now();
    let stalled = fs.pwrite(fd, &pattern(8 * C, 2), 0);
    let took = start.elapsed();
    cluster.signal(0, "CONT");
    // A liveness bound, not a timing assertion: a hang would take forever.
    assert!(took < timeout + Duration::from_secs(5), "took {took:?}");
    let errno = errno_of(stalled);
    assert!(
        [libc::EIO, libc::ETIMEDOUT].contains(&errno),
        "errno {errno}"
    );

    // A read lends the caller's buffer to receives the same way.
    fs.fsync(fd).unwrap();
    let reader = fs.open("/stalled", OpenFlags::READ, 0).unwrap();
    let mut buf = vec![0xEE; 8 * C];
    cluster.signal(0, "STOP");
    let start = Instant::now();
    let stalled = fs.pread(reader, &mut buf, 0);
    let took = start.elapsed();
    cluster.signal(0, "CONT");
    assert!(took < timeout + Duration::from_secs(5), "took {took:?}");
    let errno = errno_of(stalled);
    assert!(
        [libc::EIO, libc::ETIMEDOUT].contains(&errno),
        "errno {errno}"
    );

    // The same client reconnects, writes and reads; the data is whole.
    let last = pattern(8 * C, 3);
    assert_eq!(fs.pwrite(fd, &last, 0).unwrap(), last.len());
    fs.close(fd).unwrap();
    assert_eq!(fs.pread(reader, &mut buf, 0).unwrap(), last.len());
    assert!(buf == last);
    assert!(read_file(&cluster.client(), "/stalled") == last);
    assert!(cluster.all_running());
}

#[test]
fn bad_paths_are_refused_and_create_nothing() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    write_file(&fs, "/ok", b"ok");
    let records = |fs: &BenchFS| stats(fs).iter().map(|s| s.metadata_records).sum::<u64>();
    let root_before = fs.readdir("/").unwrap();
    let records_before = records(&fs);
    let long_name = format!("/{}", "n".repeat(256));
    let long_path = format!("/{}", "d".repeat(200)).repeat(21);
    let cases: [(&str, i32); 8] = [
        ("", libc::EINVAL),
        ("relative/x", libc::EINVAL),
        ("/a/../x", libc::EINVAL),
        ("/..", libc::EINVAL),
        ("/a\0b", libc::EINVAL),
        ("/\0", libc::EINVAL),
        (&long_name, libc::ENAMETOOLONG),
        (&long_path, libc::ENAMETOOLONG),
    ];
    for (path, want) in cases {
        let shown = &path[..path.len().min(40)];
        assert_eq!(errno_of(fs.create(path, 0o644)), want, "create {shown:?}");
        assert_eq!(
            errno_of(fs.open(path, OpenFlags::CREATE | OpenFlags::WRITE, 0o644)),
            want,
            "open {shown:?}"
        );
        assert_eq!(errno_of(fs.mkdir(path, 0o755)), want, "mkdir {shown:?}");
        assert_eq!(errno_of(fs.stat(path)), want, "stat {shown:?}");
        assert_eq!(errno_of(fs.unlink(path)), want, "unlink {shown:?}");
        assert_eq!(errno_of(fs.rmdir(path)), want, "rmdir {shown:?}");
        assert_eq!(errno_of(fs.readdir(path)), want, "readdir {shown:?}");
        assert_eq!(errno_of(fs.truncate(path, 1)), want, "truncate {shown:?}");
        assert_eq!(
            errno_of(fs.rename("/ok", path)),
            want,
            "rename to {shown:?}"
        );
        assert_eq!(
            errno_of(fs.rename(path, "/x")),
            want,
            "rename from {shown:?}"
        );
    }
    assert_eq!(fs.readdir("/").unwrap(), root_before);
    assert_eq!(records(&cluster.client()), records_before);
    assert_eq!(read_file(&fs, "/ok"), b"ok");
}

/// Set in the child process of `a_client_killed_mid_write_leaves_servers_healthy`.
const WRITER_ENV: &str = "BFS_IT_WRITER_CONFIG";
/// What the child prints once it is writing (libtest may print other text on that line).
const WRITER_STARTED: &str = "benchfs-writer-started";

#[test]
fn a_client_killed_mid_write_leaves_servers_healthy() {
    if let Some(config) = std::env::var_os(WRITER_ENV) {
        // The child: write a large file, over and over, until killed.
        let config =
            benchfs::config::ServerConfig::from_file(std::path::Path::new(&config)).unwrap();
        let fs = BenchFS::connect(&config).unwrap();
        let data = pattern(1 << 20, 3);
        let fd = fs.create("/victim", 0o644).unwrap();
        fs.write(fd, &data).unwrap();
        let mut out = std::io::stdout();
        writeln!(out, "{WRITER_STARTED}").unwrap();
        out.flush().unwrap();
        loop {
            for i in 0..16u64 {
                fs.pwrite(fd, &data, i << 20).unwrap();
            }
        }
    }
    let cluster = Cluster::start(ClusterSpec::default());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_client_killed_mid_write_leaves_servers_healthy",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, &cluster.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.any(|l| l.map(|l| l.contains(WRITER_STARTED)).unwrap_or(false)));
        // Keep draining so the child never blocks on a full pipe.
        lines.for_each(drop);
    });
    // A liveness bound: the first 1 MiB write takes milliseconds.
    let started = rx.recv_timeout(Duration::from_secs(60)).unwrap_or(false);
    if !started {
        let _ = child.kill();
        panic!("the writer did not start: {:?}", child.wait());
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let fs = cluster.client();
    let data = pattern((1 << 20) + 3, 4);
    write_file(&fs, "/after", &data);
    assert!(read_file(&cluster.client(), "/after") == data);
    // The half-written file is still a file that can be opened, read and removed.
    let size = fs.stat("/victim").unwrap().size;
    assert_eq!(read_file(&fs, "/victim").len() as u64, size);
    fs.unlink("/victim").unwrap();
    assert_eq!(stats(&fs).len(), cluster.spec.servers);
    let mut cluster = cluster;
    assert!(cluster.all_running());
}

#[test]
fn quickstart_example_runs() {
    let example = quickstart_binary();
    let cluster = Cluster::start(ClusterSpec::default());
    let out = Command::new(&example)
        .arg(cluster.registry())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Hello, BenchFS!"), "{stdout}");
    assert_eq!(
        read_file(&cluster.client(), "/hello.txt"),
        b"Hello, BenchFS!"
    );
}

/// `target/<profile>/examples/quickstart`, next to this test's `deps` directory. A plain
/// `cargo test` builds it; `cargo test --test integration_tests` does not, so then it is
/// built here (cargo no longer holds the build lock while tests run).
fn quickstart_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let example = profile_dir
        .join("examples")
        .join(format!("quickstart{}", std::env::consts::EXE_SUFFIX));
    if !example.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo)
            .args(["build", "--quiet", "--example", "quickstart"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while build.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = build.kill();
                panic!("building the quickstart example did not finish");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            build.wait().unwrap().success(),
            "building the quickstart example failed"
        );
    }
    assert!(example.exists(), "{} is missing", example.display());
    example
}

#[test]
fn handles_enforce_their_access_mode() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    write_file(&fs, "/h", b"hello");
    let ro = fs.open("/h", OpenFlags::READ, 0).unwrap();
    assert_eq!(errno_of(fs.write(ro, b"x")), libc::EBADF);
    assert_eq!(errno_of(fs.pwrite(ro, b"x", 0)), libc::EBADF);
    let wo = fs.open("/h", OpenFlags::WRITE, 0).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(errno_of(fs.read(wo, &mut buf)), libc::EBADF);
    assert_eq!(fs.write(wo, b"").unwrap(), 0);
    assert_eq!(fs.read(ro, &mut []).unwrap(), 0);
    fs.close(wo).unwrap();
    fs.close(ro).unwrap();
    assert_eq!(errno_of(fs.close(ro)), libc::EBADF);
    assert_eq!(errno_of(fs.read(ro, &mut buf)), libc::EBADF);
    assert_eq!(errno_of(fs.seek(ro, 0, Whence::Start)), libc::EBADF);
    assert_eq!(errno_of(fs.fstat(ro)), libc::EBADF);
    assert_eq!(read_file(&fs, "/h"), b"hello");
    assert_eq!(fs.stat("/h").unwrap().size, 5);
}

#[test]
fn exclusive_create_race_has_one_winner() {
    let cluster = Cluster::start(ClusterSpec::default());
    let threads = 4;
    let files = 20;
    // One config for all threads: loading it in each thread at once trips the data_dir
    // write probe in ServerConfig::validate, whose name is per process, not per thread.
    let config = cluster.config();
    let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let config = &config;
                s.spawn(move || {
                    let fs = BenchFS::connect(config).unwrap();
                    (0..files)
                        .map(|i| {
                            let flags = OpenFlags::CREATE | OpenFlags::EXCL | OpenFlags::WRITE;
                            match fs.open(&format!("/x{i}"), flags, 0o644) {
                                Ok(fd) => {
                                    fs.close(fd).unwrap();
                                    true
                                }
                                Err(e) => {
                                    assert_eq!(e.errno(), libc::EEXIST, "{e}");
                                    false
                                }
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..files {
        let winners = wins.iter().filter(|w| w[i]).count();
        assert_eq!(winners, 1, "/x{i} was created {winners} times");
    }
    assert_eq!(cluster.client().readdir("/").unwrap().len(), files);
}

#[test]
fn readdir_lists_direct_children_only() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    for dir in ["/d", "/dd", "/d-", "/d/sub", "/d/sub/deeper", "/e"] {
        fs.mkdir(dir, 0o755).unwrap();
    }
    for file in [
        "/d/a b",
        "/d/ü",
        "/dd/no",
        "/d-/no",
        "/d/sub/no",
        "/d/sub/deeper/no",
        "/e/no",
        "/d0",
    ] {
        write_file(&fs, file, b"1");
    }
    let names: Vec<_> = fs
        .readdir("/d")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["a b", "sub", "ü"]);
    let names: Vec<_> = fs
        .readdir("/d/sub")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["deeper", "no"]);
    let names: Vec<_> = fs
        .readdir("//d/./sub/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["deeper", "no"]);
    let names: Vec<_> = fs
        .readdir("/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["d", "d-", "d0", "dd", "e"]);
}

#[test]
fn unlink_frees_chunks_and_names_can_be_reused() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let chunks = |fs: &BenchFS| stats(fs).iter().map(|s| s.chunks).sum::<u64>();
    let data = pattern(3 * C + 1, 40);
    write_file(&fs, "/u", &data);
    assert_eq!(chunks(&fs), 4);
    fs.unlink("/u").unwrap();
    assert_eq!(chunks(&fs), 0);
    assert_eq!(errno_of(fs.open("/u", OpenFlags::READ, 0)), libc::ENOENT);
    // A new file under the old name starts empty, whatever the old one held.
    let fd = fs
        .open("/u", OpenFlags::CREATE | OpenFlags::RDWR, 0o644)
        .unwrap();
    assert_eq!(fs.fstat(fd).unwrap().size, 0);
    fs.pwrite(fd, b"new", 2 * CHUNK).unwrap();
    fs.close(fd).unwrap();
    let got = read_file(&cluster.client(), "/u");
    assert_eq!(got.len(), 2 * C + 3);
    assert!(
        got[..2 * C].iter().all(|&b| b == 0),
        "a new file showed the old file's data"
    );
    // A directory name can become a file and back.
    fs.mkdir("/n", 0o755).unwrap();
    fs.rmdir("/n").unwrap();
    write_file(&fs, "/n", b"file");
    fs.unlink("/n").unwrap();
    fs.mkdir("/n", 0o755).unwrap();
    assert!(cluster.client().stat("/n").unwrap().is_dir());
}

/// A create checks its parent while it makes the record (two servers, one round trip);
/// the record made under a parent that turned out missing must be gone afterwards.
#[test]
fn create_under_a_missing_or_file_parent_leaves_no_record() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let missing = fs.open("/absent/f", OpenFlags::CREATE | OpenFlags::WRITE, 0o644);
    assert_eq!(errno_of(missing), libc::ENOENT);
    assert_eq!(errno_of(fs.mkdir("/absent/d", 0o755)), libc::ENOENT);
    write_file(&fs, "/plain", b"x");
    assert_eq!(
        errno_of(fs.open("/plain/f", OpenFlags::CREATE | OpenFlags::WRITE, 0o644)),
        libc::ENOTDIR
    );
    fs.mkdir("/absent", 0o755).unwrap();
    let fresh = cluster.client();
    assert_eq!(
        errno_of(fresh.stat("/absent/f")),
        libc::ENOENT,
        "the rolled-back file is gone"
    );
    assert_eq!(
        errno_of(fresh.stat("/absent/d")),
        libc::ENOENT,
        "the rolled-back directory is gone"
    );
    assert!(fresh.readdir("/absent").unwrap().is_empty());
    let total: u64 = stats(&fresh).iter().map(|s| s.metadata_records).sum();
    assert_eq!(total, 2, "only /plain and /absent exist");
}
