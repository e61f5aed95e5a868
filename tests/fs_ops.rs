//! File-system operations end to end, through the public API against real `benchfsd`
//! processes over real UCX: reads and writes around chunk boundaries, seek, append, holes,
//! truncate, access modes, and the quickstart example.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benchfs::blocking::{BenchFS, OpenFlags, Whence};
use common::files::{
    assert_times_moved, errno_of, read_file, write_file, write_in_place, C, CHUNK, IN_PLACE, SIZES,
};
use common::{pattern, Cluster, ClusterSpec};

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
fn a_small_read_after_a_large_one_never_goes_back_in_time() {
    // The chunk cache keeps small reads only. A large read that bypassed it left the
    // older small span cached, so the next small read of the chunk returned bytes older
    // than the large read had just returned (found in review).
    let chunk = 1 << 20;
    let cluster = Cluster::start(ClusterSpec {
        chunk_size: chunk,
        ..ClusterSpec::default()
    });
    let writer = cluster.client();
    let mut config = cluster.config();
    config.cache.chunk_cache_mb = 64;
    let reader = BenchFS::connect(&config).unwrap();
    let old = pattern(chunk as usize, 40);
    write_file(&writer, "/t", &old);
    let fd = reader.open("/t", OpenFlags::READ, 0).unwrap();
    let mut small = vec![0u8; 4096];
    assert_eq!(reader.pread(fd, &mut small, 0).unwrap(), 4096);
    assert!(small[..] == old[..4096]);
    let new = pattern(chunk as usize, 41);
    write_file(&writer, "/t", &new);
    let mut large = vec![0u8; chunk as usize];
    assert_eq!(reader.pread(fd, &mut large, 0).unwrap(), large.len());
    assert!(large == new, "a large read goes to the servers");
    assert_eq!(reader.pread(fd, &mut small, 0).unwrap(), 4096);
    assert!(
        small[..] == new[..4096],
        "a small read returned older bytes"
    );
    reader.close(fd).unwrap();
}

#[test]
fn ftruncate_growing_a_file_keeps_what_the_handle_wrote() {
    // A truncate that grows a file cuts past its old end; that end must count the bytes
    // this client's own handles wrote and have not published yet.
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let data = pattern(3 * C + 11, 70);
    let fd = fs
        .open("/grow", OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
        .unwrap();
    assert_eq!(fs.write(fd, &data).unwrap(), data.len());
    fs.ftruncate(fd, (5 * C) as u64).unwrap();
    fs.close(fd).unwrap();
    let mut want = data.clone();
    want.resize(5 * C, 0);
    assert!(read_file(&cluster.client(), "/grow") == want);
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
fn nothing_makes_a_file_larger_than_the_largest_off_t() {
    // Found by a hostile-user run: a 300-byte pwrite at 2^63 - 256 succeeded, and the
    // file's size then read as negative through the C API, and `cat` streamed zeros.
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let data = pattern(1000, 13);
    write_file(&fs, "/big", &data);
    let fd = fs.open("/big", OpenFlags::RDWR, 0).unwrap();
    let max = i64::MAX as u64;
    assert_eq!(errno_of(fs.pwrite(fd, &[7; 300], max - 255)), libc::EFBIG);
    assert_eq!(errno_of(fs.pwrite(fd, &[7; 1], max)), libc::EFBIG);
    assert_eq!(errno_of(fs.ftruncate(fd, max + 1)), libc::EFBIG);
    assert_eq!(errno_of(fs.truncate("/big", u64::MAX)), libc::EFBIG);
    assert_eq!(fs.seek(fd, i64::MAX, Whence::Start).unwrap(), max);
    assert_eq!(errno_of(fs.seek(fd, 1, Whence::Current)), libc::EINVAL);
    assert_eq!(errno_of(fs.write(fd, b"x")), libc::EFBIG);
    fs.close(fd).unwrap();
    assert_eq!(fs.stat("/big").unwrap().size, data.len() as u64);
    assert!(read_file(&cluster.client(), "/big") == data);
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

/// One step of a scenario on one file, made through the API and on a model of its bytes.
#[derive(Debug)]
enum Step<'a> {
    /// `write_file`: create (or truncate) the file and write these bytes.
    Write(&'a [u8]),
    /// Truncate by path.
    Truncate(u64),
    /// Open with these flags (the handle must show the model's size), pwrite each
    /// `(offset, bytes)`, close.
    Open(OpenFlags, Vec<(u64, &'a [u8])>),
    /// Create and write these bytes, truncate by path to the length while the handle still
    /// holds them unpublished, then close.
    TruncateOpen(&'a [u8], u64),
}

/// Steps on a path, and the sentence that says what is wrong if the file then differs
/// from its model.
type Case<'a> = (&'static str, Vec<Step<'a>>, &'static str);

/// Runs the cases in order on one cluster; a path's model carries over to its next case.
fn run_cases(spec: ClusterSpec, cases: Vec<Case>) {
    let cluster = Cluster::start(spec);
    let writer = cluster.client();
    let reader = cluster.client();
    let mut models: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (path, steps, what) in cases {
        let model = models.entry(path).or_default();
        for step in &steps {
            apply(&writer, path, step, model);
        }
        check(&cluster, &writer, &reader, path, model, what);
    }
}

/// Makes `step` on `path` through `fs`, and on `model`.
fn apply(fs: &BenchFS, path: &str, step: &Step, model: &mut Vec<u8>) {
    match *step {
        Step::Write(data) => {
            write_file(fs, path, data);
            *model = data.to_vec();
        }
        Step::Truncate(len) => {
            fs.truncate(path, len).unwrap();
            model.resize(len as usize, 0);
        }
        Step::Open(flags, ref writes) => {
            let mode = if flags.contains(OpenFlags::CREATE) {
                0o644
            } else {
                0
            };
            let fd = fs.open(path, flags, mode).unwrap();
            if flags.contains(OpenFlags::TRUNC) {
                model.clear();
            }
            let size = fs.fstat(fd).unwrap().size;
            assert_eq!(size, model.len() as u64, "{path} opened with {flags:?}");
            for &(offset, bytes) in writes {
                assert_eq!(fs.pwrite(fd, bytes, offset).unwrap(), bytes.len());
                let (start, end) = (offset as usize, offset as usize + bytes.len());
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[start..end].copy_from_slice(bytes);
            }
            fs.close(fd).unwrap();
        }
        Step::TruncateOpen(data, len) => {
            let fd = fs.create(path, 0o644).unwrap();
            fs.write(fd, data).unwrap();
            fs.truncate(path, len).unwrap();
            fs.close(fd).unwrap();
            *model = data.to_vec();
            model.resize(len as usize, 0);
        }
    }
}

/// `path` reads as `model` to the client that made the steps, to another client and to a
/// new one; the first and the last `stat` its size too. (The other client may answer
/// `stat` from its metadata cache, which keeps a path until that client changes it:
/// close-to-open consistency.)
fn check(
    cluster: &Cluster,
    writer: &BenchFS,
    reader: &BenchFS,
    path: &str,
    model: &[u8],
    what: &str,
) {
    let fresh = cluster.client();
    for (who, fs) in [("the writer", writer), ("a new client", &fresh)] {
        let size = fs.stat(path).unwrap().size;
        assert_eq!(size, model.len() as u64, "{what}: the size {who} sees");
    }
    for (who, fs) in [
        ("the writer", writer),
        ("a reader", reader),
        ("a new client", &fresh),
    ] {
        let got = read_file(fs, path);
        let first_difference = got.iter().zip(model).position(|(a, b)| a != b);
        assert!(
            got.len() == model.len() && first_difference.is_none(),
            "{what}: {who} read {} bytes of {}, the first wrong one at {first_difference:?}",
            got.len(),
            model.len()
        );
    }
}

#[test]
fn sparse_writes_read_zeros_in_holes() {
    sparse_writes(ClusterSpec::default());
}

#[test]
fn sparse_writes_read_zeros_in_holes_file_backend() {
    sparse_writes(ClusterSpec::backend("file"));
}

fn sparse_writes(spec: ClusterSpec) {
    let data = pattern(100, 11);
    let create = OpenFlags::CREATE | OpenFlags::WRITE | OpenFlags::TRUNC;
    let cases = vec![
        (
            "/sparse",
            vec![Step::Open(create, vec![(5 * CHUNK + 3, &data[..])])],
            "the hole before the data is not zeros",
        ),
        // A hole inside one chunk, between two writes to it.
        (
            "/holey",
            vec![Step::Open(
                create,
                vec![(CHUNK + 10, b"first"), (CHUNK + 1000, b"second")],
            )],
            "the hole inside the chunk is not zeros",
        ),
    ];
    run_cases(spec, cases);
}

#[test]
fn truncate_shrink_grow_and_trunc_flag() {
    truncate_checks(ClusterSpec::default());
}

#[test]
fn truncate_shrink_grow_and_trunc_flag_file_backend() {
    truncate_checks(ClusterSpec::backend("file"));
}

fn truncate_checks(spec: ClusterSpec) {
    let data = pattern(4 * C + 100, 12);
    let cut = CHUNK + CHUNK / 2;
    let cases = vec![
        (
            "/t",
            vec![Step::Write(&data), Step::Truncate(cut)],
            "a shrink lost the bytes before the cut",
        ),
        // Growing again: the bytes past the old cut read as zeros, not as the old data.
        (
            "/t",
            vec![Step::Truncate(3 * CHUNK + 5)],
            "old data showed through after shrink and grow",
        ),
        ("/t", vec![Step::Truncate(0)], "a cut to 0 left data"),
        (
            "/t",
            vec![Step::Truncate(CHUNK + 1)],
            "growing an empty file did not read zeros",
        ),
        // A cut exactly on a chunk boundary keeps the chunk before it whole.
        (
            "/edge",
            vec![
                Step::Write(&data),
                Step::Truncate(2 * CHUNK),
                Step::Truncate(3 * CHUNK),
            ],
            "old data past a chunk-aligned cut",
        ),
        // Writing past a cut does not bring the old bytes in between back.
        (
            "/edge",
            vec![
                Step::Truncate(10),
                Step::Open(OpenFlags::WRITE, vec![(2 * CHUNK + 1, b"z")]),
            ],
            "old data came back after a write past the cut",
        ),
        (
            "/open",
            vec![Step::TruncateOpen(&data[..2 * C], CHUNK - 1)],
            "truncating a file this client has open did not count its unpublished writes",
        ),
        // TRUNC on open empties the file and its chunks.
        (
            "/tf",
            vec![
                Step::Write(&data),
                Step::Open(
                    OpenFlags::WRITE | OpenFlags::TRUNC,
                    vec![(2 * CHUNK, b"end")],
                ),
            ],
            "TRUNC left old data behind",
        ),
        // Read-only with TRUNC cuts too, as open(2) does on Linux.
        (
            "/tr",
            vec![
                Step::Write(&data),
                Step::Open(OpenFlags::READ | OpenFlags::TRUNC, vec![]),
            ],
            "a read-only open with TRUNC left the file as it was",
        ),
    ];
    run_cases(spec, cases);
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
fn quickstart_example_runs() {
    let example = quickstart_binary();
    let cluster = Cluster::start(ClusterSpec::default());
    // The example reads `benchfs.toml` from its working directory, as the README's does.
    let out = Command::new(&example)
        .current_dir(cluster.registry().parent().unwrap())
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
        read_file(&cluster.client(), "/test.txt"),
        b"Hello, BenchFS!"
    );
}

/// `target/<profile>/examples/quickstart`, next to this test's `deps` directory. A plain
/// `cargo test` builds it; `cargo test --test fs_ops` does not, and a binary left from an
/// older build may speak an older protocol, so it is always brought up to date here
/// (cargo no longer holds the build lock while tests run; an up-to-date build is quick).
fn quickstart_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let example = profile_dir
        .join("examples")
        .join(format!("quickstart{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = profile_dir.file_name() == Some(std::ffi::OsStr::new("release"));
    let mut build = Command::new(cargo)
        .args(["build", "--quiet", "--example", "quickstart"])
        .args(release.then_some("--release"))
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
    assert!(example.exists(), "{} is missing", example.display());
    example
}

/// A write in place moves the file's modification and change times at close, and a
/// truncation moves both at once, as on Linux, whether the file's bytes live in chunks or
/// in its record; times set while a writer has the file open stay (`cp -p` sets them
/// before it closes).
#[test]
fn writes_in_place_move_the_modification_time() {
    use benchfs::proto::ops;
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    for (path, len) in [("/chunked", 3 * C), ("/small", 100)] {
        write_file(&fs, path, &pattern(len, 7));
        write_in_place(&fs, path);
        let after = fs.stat(path).unwrap();
        let mut want = pattern(len, 7);
        want[10..18].copy_from_slice(IN_PLACE);
        assert_eq!(read_file(&fs, path), want, "{path}");

        // A write past the end: the writer's fstat shows the new size with new times
        // (found by a hostile run: the size moved, the times did not).
        let fd = fs.open(path, OpenFlags::WRITE, 0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs.pwrite(fd, b"grown", len as u64 + 100).unwrap();
        let grown = fs.fstat(fd).unwrap();
        assert_eq!(grown.size, len as u64 + 105, "{path}");
        assert_times_moved(&format!("{path}: fstat after growing"), &grown, &after);
        fs.ftruncate(fd, len as u64).unwrap();
        fs.close(fd).unwrap();

        let fd = fs.open(path, OpenFlags::WRITE, 0).unwrap();
        fs.pwrite(fd, b"again", 0).unwrap();
        let set = ops::SetAttrRequest {
            path: path.into(),
            file_id: after.file_id,
            set: ops::set_attr::MTIME,
            mode: 0,
            uid: 0,
            gid: 0,
            atime_ns: 0,
            mtime_ns: 1_000_000_000,
            ctime_ns: 0,
        };
        fs.block_on(fs.client().set_attr(set)).unwrap();
        fs.close(fd).unwrap();
        assert_eq!(
            fs.stat(path).unwrap().mtime_ns,
            1_000_000_000,
            "{path}: the close undid the time set after the write"
        );

        let before = fs.stat(path).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs.truncate(path, 5).unwrap();
        let cut = fs.stat(path).unwrap();
        assert!(
            cut.mtime_ns > before.mtime_ns && cut.ctime_ns > before.ctime_ns,
            "{path}: a truncation left the times at {} and {} (were {} and {})",
            cut.mtime_ns,
            cut.ctime_ns,
            before.mtime_ns,
            before.ctime_ns
        );
    }
    // A file another client removed has no time to move: the close succeeds.
    write_file(&fs, "/removed", &pattern(3 * C, 8));
    let fd = fs.open("/removed", OpenFlags::WRITE, 0).unwrap();
    fs.pwrite(fd, b"x", 0).unwrap();
    cluster.client().unlink("/removed").unwrap();
    fs.close(fd).unwrap();
}
