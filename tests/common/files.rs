//! Helpers of the file-system tests: whole-file reads and writes through the public API,
//! errno checks, server counters, and a fixture of files that straddle chunk boundaries.

use std::time::{Duration, Instant};

use benchfs::api::FileMetadata;
use benchfs::blocking::{ApiError, BenchFS, OpenFlags};
use benchfs_proto::ops::StatsReply;
use benchfs_proto::OpCode;

use super::pattern;

/// The chunk size every default test cluster uses (`ClusterSpec::default`).
pub const CHUNK: u64 = 64 * 1024;
/// [`CHUNK`] as a length.
pub const C: usize = CHUNK as usize;

/// Sizes that sit on and around chunk boundaries, plus one large enough (16 chunks of
/// 64 KiB, each above the 32 KiB threshold) to move by rendezvous.
pub const SIZES: [usize; 7] = [0, 1, C - 1, C, C + 1, 3 * C + 17, (1 << 20) + 5];

/// Writes `IN_PLACE` at offset [`IN_PLACE_AT`] of `path` through a handle that does not
/// truncate, closes it, and checks that both times moved (20 ms after the last change)
/// and the size did not. Returns the file's modification time after the close.
pub fn write_in_place(fs: &BenchFS, path: &str) -> u64 {
    let before = fs.stat(path).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let fd = fs.open(path, OpenFlags::WRITE, 0).unwrap();
    assert_eq!(
        fs.pwrite(fd, IN_PLACE, IN_PLACE_AT).unwrap(),
        IN_PLACE.len()
    );
    assert_times_moved(
        &format!("{path}: fstat after a write in place"),
        &fs.fstat(fd).unwrap(),
        &before,
    );
    fs.close(fd).unwrap();
    let after = fs.stat(path).unwrap();
    assert_eq!(after.size, before.size, "{path}: the size moved");
    assert!(
        after.mtime_ns > before.mtime_ns,
        "{path}: a write in place left the modification time at {} (was {})",
        after.mtime_ns,
        before.mtime_ns
    );
    assert!(
        after.ctime_ns >= after.mtime_ns,
        "{path}: a write in place left the change time at {} (modified at {})",
        after.ctime_ns,
        after.mtime_ns
    );
    after.mtime_ns
}

/// Asserts that `now`'s modification time moved past `before`'s, and its change time with
/// it; `what` names the look for the message.
#[track_caller]
pub fn assert_times_moved(what: &str, now: &FileMetadata, before: &FileMetadata) {
    assert!(
        now.mtime_ns > before.mtime_ns && now.ctime_ns >= now.mtime_ns,
        "{what} shows the times {} and {} (were {})",
        now.mtime_ns,
        now.ctime_ns,
        before.mtime_ns
    );
}

/// What [`write_in_place`] writes.
pub const IN_PLACE: &[u8] = b"in place";
/// Where [`write_in_place`] writes it.
pub const IN_PLACE_AT: u64 = 10;

/// Creates (or truncates) `path` and writes `data` to it in one call, then closes it.
pub fn write_file(fs: &BenchFS, path: &str, data: &[u8]) {
    let fd = fs
        .create(path, 0o644)
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
    assert_eq!(
        fs.write(fd, data)
            .unwrap_or_else(|e| panic!("write {path}: {e}")),
        data.len()
    );
    fs.close(fd).unwrap_or_else(|e| panic!("close {path}: {e}"));
}

/// Opens `path` for reading and reads it to the end.
pub fn try_read_file(fs: &BenchFS, path: &str) -> Result<Vec<u8>, ApiError> {
    let fd = fs.open(path, OpenFlags::READ, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let result = loop {
        match fs.read(fd, &mut buf) {
            Ok(0) => break Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    fs.close(fd)?;
    result
}

/// Opens `path` for reading and reads it to the end; panics on error.
pub fn read_file(fs: &BenchFS, path: &str) -> Vec<u8> {
    try_read_file(fs, path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The errno of a call that must fail.
#[track_caller]
pub fn errno_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> i32 {
    match result {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.errno(),
    }
}

/// Every server's counters; panics if one does not answer.
pub fn stats(fs: &BenchFS) -> Vec<StatsReply> {
    fs.block_on(fs.client().server_stats())
        .into_iter()
        .map(|(entry, r)| r.unwrap_or_else(|e| panic!("stats of {}: {e}", entry.node_id)))
        .collect()
}

/// Requests the servers took, by operation, handshakes and `Stats` left out.
pub fn requests(all: &[StatsReply]) -> Vec<(OpCode, u64)> {
    OpCode::ALL
        .iter()
        .filter(|op| !matches!(op, OpCode::Stats | OpCode::Hello | OpCode::Auth))
        .map(|&op| {
            (
                op,
                all.iter()
                    .filter_map(|s| s.op(op))
                    .map(|o| o.requests)
                    .sum(),
            )
        })
        .collect()
}

/// The requests `f` made the servers take, by operation (those it made none of left out).
/// `fs` has asked every server for counters before, so it is connected to them all. A
/// server counts a request just after its reply went, so the counts are read until they
/// stop moving.
pub fn requests_of(fs: &BenchFS, f: impl FnOnce()) -> Vec<(OpCode, u64)> {
    let before = requests(&stats(fs));
    f();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = requests(&stats(fs));
        let delta: Vec<(OpCode, u64)> = now
            .iter()
            .zip(&before)
            .map(|(&(op, n), &(_, b))| (op, n - b))
            .filter(|&(_, n)| n > 0)
            .collect();
        if last.as_ref() == Some(&delta) || Instant::now() > deadline {
            return delta;
        }
        last = Some(delta);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a set of files whose sizes straddle chunks; returns (path, contents).
pub fn write_fixture_files(fs: &BenchFS, tag: u64) -> Vec<(String, Vec<u8>)> {
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

/// Every file of `files` has its size and its contents.
pub fn check_files(fs: &BenchFS, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        assert_eq!(fs.stat(path).unwrap().size, data.len() as u64, "{path}");
        assert!(read_file(fs, path) == *data, "{path} read back differently");
    }
}

/// A call that reached a dead or stopped server failed the way it must: EIO or ETIMEDOUT.
#[track_caller]
pub fn assert_unreachable(what: &str, e: &ApiError) {
    assert!(
        [libc::EIO, libc::ETIMEDOUT].contains(&e.errno()),
        "{what}: {e} (errno {})",
        e.errno()
    );
}

/// Chunks held by all servers together.
pub fn total_chunks(fs: &BenchFS) -> u64 {
    stats(fs).iter().map(|s| s.chunks).sum()
}

/// Metadata records held by all servers together.
pub fn total_records(fs: &BenchFS) -> u64 {
    stats(fs).iter().map(|s| s.metadata_records).sum()
}

/// Asserts that `lines` are the `records` (each ending in a newline) in any order, each
/// once: what appends from several writers at once must leave.
pub fn assert_holds_each_record_once<R: AsRef<str>>(lines: &[&str], records: &[R]) {
    let mut lines = lines.to_vec();
    lines.sort_unstable();
    let mut want: Vec<&str> = records
        .iter()
        .map(|r| {
            r.as_ref()
                .strip_suffix('\n')
                .expect("each record ends in a newline")
        })
        .collect();
    want.sort_unstable();
    assert_eq!(lines.len(), want.len(), "appends were lost");
    assert!(lines == want, "appends differ");
}
