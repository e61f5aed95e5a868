//! `benchfs mount`: a real FUSE mount of a real cluster, used through std::fs, the shell's
//! tools and several processes, checked byte for byte and errno for errno.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mount::{is_mounted, spawn_mount, Mounted};
use common::{pattern, ClusterSpec};

/// The chunk size of the test clusters (64 KiB), so small files cross chunk boundaries.
const C: usize = 64 * 1024;

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("the call should fail")
        .raw_os_error()
        .unwrap_or(0)
}

/// The names in directory `dir`.
fn names_in(dir: &Path) -> Vec<std::ffi::OsString> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `benchfs mount` again on `m`'s mount point; whether it succeeded, and its stderr.
fn mount_again(m: &Mounted) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_benchfs"))
        .arg("mount")
        .arg(&m.root)
        .arg("--config")
        .arg(&m.cluster.config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), err)
}

fn shell(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes, reads back, appends, truncates and leaves holes across chunk boundaries.
fn data_round_trips(m: &Mounted) {
    let f = m.path("data");
    let a = pattern(3 * C + 17, 1);
    fs::write(&f, &a).unwrap();
    assert!(read(&f) == a, "read back");
    assert_eq!(fs::metadata(&f).unwrap().len(), a.len() as u64);

    let tail = pattern(C + 5, 2);
    OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(&tail)
        .unwrap();
    let mut want = a.clone();
    want.extend_from_slice(&tail);
    assert!(read(&f) == want, "append");

    // Shrink into the middle of a chunk, then grow: the cut bytes read as zeros.
    let file = OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(C as u64 + 3).unwrap();
    file.set_len(2 * C as u64 + 9).unwrap();
    drop(file);
    want.truncate(C + 3);
    want.resize(2 * C + 9, 0);
    assert!(read(&f) == want, "truncate shrink then grow");

    // A write far past the end leaves a hole of zeros.
    let file = OpenOptions::new().write(true).open(&f).unwrap();
    file.write_all_at(b"end", 5 * C as u64 + 1).unwrap();
    drop(file);
    want.resize(5 * C + 1, 0);
    want.extend_from_slice(b"end");
    assert!(read(&f) == want, "sparse hole");

    // Overwrite across a chunk boundary, read at odd offsets.
    let file = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    let patch = pattern(C, 3);
    file.write_all_at(&patch, C as u64 - 100).unwrap();
    want[C - 100..2 * C - 100].copy_from_slice(&patch);
    let mut buf = vec![0; 3 * C];
    file.read_exact_at(&mut buf, 7).unwrap();
    assert!(buf == want[7..7 + 3 * C], "overwrite across a boundary");
    drop(file);

    // O_TRUNC on open.
    fs::write(&f, b"short").unwrap();
    assert_eq!(read(&f), b"short");
}

#[test]
fn files_round_trip_in_every_cache_mode() {
    for options in ["", "direct_io", "writeback_cache"] {
        let Some(m) = Mounted::start("fuse round trip", ClusterSpec::default(), options) else {
            return;
        };
        data_round_trips(&m);
        // What one mount wrote, a fresh client reads through the native API.
        let fs = m.cluster.client();
        let fd = fs.open("/data", benchfs::api::OpenFlags::READ, 0).unwrap();
        let mut buf = [0; 16];
        let n = fs.read(fd, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"short", "{options}");
    }
}

#[test]
fn attributes_links_renames_and_listings() {
    let Some(m) = Mounted::start("fuse attributes", ClusterSpec::default(), "") else {
        return;
    };
    attributes(&m);
    links_and_renames(&m);
    directory_times(&m);
    listings_and_unlinked_files(&m);
}

/// Through the mount, a directory's time moves when an entry is made, removed or renamed
/// in it (the kernel drops its cached attributes of the directory then): Python's import
/// cache lists a directory again only when that time moves, so a module written after it
/// first looked was never found (found by a hostile run).
fn directory_times(m: &Mounted) {
    let dir = m.path("modules");
    fs::create_dir(&dir).unwrap();
    let changes: [(&str, &dyn Fn()); 4] = [
        ("create", &|| {
            fs::write(dir.join("later.py"), b"VALUE = 1\n").unwrap()
        }),
        ("rename", &|| {
            fs::rename(dir.join("later.py"), dir.join("renamed.py")).unwrap()
        }),
        ("mkdir", &|| fs::create_dir(dir.join("package")).unwrap()),
        ("unlink", &|| {
            fs::remove_file(dir.join("renamed.py")).unwrap()
        }),
    ];
    for (what, change) in changes {
        let before = fs::metadata(&dir).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        change();
        let after = fs::metadata(&dir).unwrap().modified().unwrap();
        assert!(
            after > before,
            "{what} left the directory's time at {before:?}"
        );
    }
}

/// stat fields, chmod, chown and utimens, seen by the mount and by another client.
fn attributes(m: &Mounted) {
    let f = m.path("f");
    let before = SystemTime::now() - Duration::from_secs(1);
    fs::write(&f, b"12345").unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!(md.len(), 5);
    assert_eq!(md.mode() & 0o170000, libc::S_IFREG);
    assert_eq!(md.nlink(), 1);
    // SAFETY: geteuid cannot fail.
    assert_eq!(md.uid(), unsafe { libc::geteuid() });
    assert!(md.modified().unwrap() >= before);

    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let t = UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!(md.modified().unwrap(), t);
    assert_eq!(md.accessed().unwrap(), t);
    // A new client (another node) sees the same attributes.
    let native = m.cluster.client().stat("/f").unwrap();
    assert_eq!((native.mode, native.uid, native.gid), (0o640, 1234, 5678));
    // A set-group-ID directory passes its group on, and the bit to directories (found
    // by a hostile run: they took the creator's group).
    let sg = m.path("sg");
    fs::create_dir(&sg).unwrap();
    std::os::unix::fs::chown(&sg, None, Some(5678)).unwrap();
    fs::set_permissions(&sg, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(sg.join("f"), b"x").unwrap();
    fs::create_dir(sg.join("d")).unwrap();
    let (file, dir) = (
        fs::metadata(sg.join("f")).unwrap(),
        fs::metadata(sg.join("d")).unwrap(),
    );
    assert_eq!((file.gid(), file.mode() & 0o7777), (5678, 0o644));
    assert_eq!((dir.gid(), dir.mode() & 0o7777), (5678, 0o2755));
    times_and_writes(m, t);
}

/// Times set on a file still open with writes it has not published (tar, cp -p) are the
/// file's after its close, which publishes nothing more; a write in place moves them.
fn times_and_writes(m: &Mounted, t: SystemTime) {
    let mut stamped = File::create(m.path("stamped")).unwrap();
    stamped.write_all(b"written, then stamped").unwrap();
    stamped
        .set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
    drop(stamped);
    let native = m.cluster.client().stat("/stamped").unwrap();
    assert_eq!(native.size, 21);
    assert_eq!(
        native.mtime_ns, 1_000_000_000_123_456_789,
        "mtime after close"
    );
    // A write in place moves the time at its close, as on Linux (`rsync` and `make` trust
    // it); times set after such a write, before the close, stay.
    let stamped = m.path("stamped");
    let file = File::options().write(true).open(&stamped).unwrap();
    file.write_all_at(b"W", 0).unwrap();
    drop(file);
    let native = m.cluster.client().stat("/stamped").unwrap();
    assert_eq!(native.size, 21);
    assert!(
        native.mtime_ns > 1_000_000_000_123_456_789,
        "a write in place left the time as it was"
    );
    // A stat while the write is unpublished is not kept past the close that moves the
    // times (found by a hostile run: the old times showed for the attribute timeout).
    let file = File::options().write(true).open(&stamped).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    file.write_all_at(b"W", 0).unwrap();
    fs::metadata(&stamped).unwrap();
    drop(file);
    let seen = fs::metadata(&stamped).unwrap();
    let native = m.cluster.client().stat("/stamped").unwrap();
    assert_eq!(
        seen.mtime() as u64 * 1_000_000_000 + seen.mtime_nsec() as u64,
        native.mtime_ns,
        "the mount's time after the close"
    );
    let file = File::options().write(true).open(&stamped).unwrap();
    file.write_all_at(b"w", 0).unwrap();
    file.set_times(fs::FileTimes::new().set_modified(t))
        .unwrap();
    drop(file);
    let native = m.cluster.client().stat("/stamped").unwrap();
    assert_eq!(
        native.mtime_ns, 1_000_000_000_123_456_789,
        "mtime set after a write in place"
    );
    assert_eq!(read(&stamped), b"written, then stamped");
}

/// Symbolic links, and renames of files and trees across directories.
fn links_and_renames(m: &Mounted) {
    std::os::unix::fs::symlink("f", m.path("link")).unwrap();
    assert_eq!(fs::read_link(m.path("link")).unwrap(), Path::new("f"));
    assert_eq!(read(&m.path("link")), b"12345");
    assert!(fs::symlink_metadata(m.path("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    std::os::unix::fs::symlink("/no/such/target", m.path("dangling")).unwrap();
    assert_eq!(errno(fs::read(m.path("dangling"))), libc::ENOENT);
    fs::remove_file(m.path("dangling")).unwrap();

    // Renames across directories, of files and of whole trees.
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    fs::write(m.path("a/b/c/deep"), pattern(C + 1, 9)).unwrap();
    fs::write(m.path("a/top"), b"top").unwrap();
    fs::create_dir(m.path("z")).unwrap();
    fs::rename(m.path("a/top"), m.path("z/top")).unwrap();
    assert_eq!(read(&m.path("z/top")), b"top");
    fs::rename(m.path("a"), m.path("z/moved")).unwrap();
    assert!(read(&m.path("z/moved/b/c/deep")) == pattern(C + 1, 9));
    assert_eq!(errno(fs::metadata(m.path("a"))), libc::ENOENT);
    assert_eq!(errno(fs::metadata(m.path("a/b/c/deep"))), libc::ENOENT);
}

/// A directory of 5,000 entries, a file unlinked while open, and statfs.
fn listings_and_unlinked_files(m: &Mounted) {
    let big = m.path("big");
    fs::create_dir(&big).unwrap();
    for i in 0..5000 {
        File::create(big.join(format!("entry-{i:05}"))).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let want: Vec<String> = (0..5000).map(|i| format!("entry-{i:05}")).collect();
    assert_eq!(names, want);

    // An unlinked file stays readable through a descriptor still open.
    let mut open = File::open(m.path("z/top")).unwrap();
    fs::remove_file(m.path("z/top")).unwrap();
    assert_eq!(errno(fs::metadata(m.path("z/top"))), libc::ENOENT);
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "top");
    drop(open);
    assert_eq!(
        names_in(&m.path("z")),
        ["moved"],
        "the hidden name is gone after the last close"
    );

    // So does one a rename replaced (it gave ESTALE), small and large alike.
    for (name, len) in [("small", 10), ("large", 3 * C + 5)] {
        let old = pattern(len, 7);
        fs::write(m.path(&format!("z/{name}")), &old).unwrap();
        fs::write(m.path("z/new"), b"new bytes").unwrap();
        let mut open = File::open(m.path(&format!("z/{name}"))).unwrap();
        fs::rename(m.path("z/new"), m.path(&format!("z/{name}"))).unwrap();
        assert_eq!(read(&m.path(&format!("z/{name}"))), b"new bytes");
        let mut got = Vec::new();
        open.read_to_end(&mut got).unwrap();
        assert!(
            got == old,
            "{name}: the replaced file read {} bytes",
            got.len()
        );
        drop(open);
        fs::remove_file(m.path(&format!("z/{name}"))).unwrap();
    }
    assert_eq!(
        names_in(&m.path("z")),
        ["moved"],
        "the replaced files are gone after their last close"
    );

    // statfs reports the servers' totals: what they hold and the room of their one host
    // (the memory the stores could still map), not exabytes.
    let out = shell(&m.root, "df -P . | tail -1");
    let fields: Vec<&str> = out.split_whitespace().collect();
    let kib_blocks: u64 = fields[1].parse().unwrap();
    let host_kib = common::host_memory_kib();
    assert!(kib_blocks > 0 && kib_blocks < 2 * host_kib, "{out}");
    // Inodes: used is the files there are (a negative count read as unsigned fails to
    // parse), and the total holds used and free.
    let out = shell(&m.root, "df -Pi . | tail -1");
    let fields: Vec<&str> = out.split_whitespace().collect();
    let [total, used, free] = [1, 2, 3].map(|i| fields[i].parse::<u64>().expect(&out));
    assert!(used > 0 && total == used + free, "{out}");
}

#[test]
fn failures_give_the_errno_linux_programs_expect() {
    let Some(m) = Mounted::start("fuse errnos", ClusterSpec::default(), "") else {
        return;
    };
    fs::write(m.path("file"), b"x").unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/inner"), b"y").unwrap();

    let long = "n".repeat(256);
    assert_eq!(errno(File::create(m.path(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::create_dir(m.path(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno(File::create(m.path("file/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs::metadata(m.path("file/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_dir(m.path("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_dir(m.path("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(m.path("dir"))), libc::EISDIR);
    assert_eq!(errno(fs::create_dir(m.path("dir"))), libc::EEXIST);
    assert_eq!(errno(fs::metadata(m.path("missing"))), libc::ENOENT);
    assert_eq!(errno(fs::remove_file(m.path("missing"))), libc::ENOENT);
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.path("file"))
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(OpenOptions::new().write(true).open(m.path("dir"))),
        libc::EISDIR
    );
    assert_eq!(
        errno(fs::hard_link(m.path("file"), m.path("hard"))),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::rename(m.path("dir"), m.path("dir/inside"))),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs::rename(m.path("file"), m.path("dir"))),
        libc::EISDIR
    );
    fs::create_dir(m.path("empty")).unwrap();
    assert_eq!(
        errno(fs::rename(m.path("empty"), m.path("file"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs::rename(m.path("dir"), m.path("empty2/x"))),
        libc::ENOENT
    );
    assert_eq!(errno(fs::read_link(m.path("file"))), libc::EINVAL);
    rename_flags_and_unsupported_calls(&m);
    // Nothing above left a stray entry.
    let mut names: Vec<_> = fs::read_dir(&m.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "empty", "fresh", "other"]);
}

/// renameat2 flags, fallocate and mkfifo.
fn rename_flags_and_unsupported_calls(m: &Mounted) {
    let c = |p: &str| std::ffi::CString::new(m.path(p).to_str().unwrap()).unwrap();
    let renameat2 = |from: &str, to: &str, flags: u32| {
        // SAFETY: both paths are valid NUL-terminated strings.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                c(from).as_ptr(),
                libc::AT_FDCWD,
                c(to).as_ptr(),
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    fs::write(m.path("other"), b"o").unwrap();
    assert_eq!(
        errno(renameat2("file", "other", libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    assert_eq!(
        errno(renameat2("file", "other", libc::RENAME_EXCHANGE)),
        libc::EINVAL
    );
    renameat2("file", "fresh", libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(read(&m.path("fresh")), b"x");

    let file = OpenOptions::new()
        .write(true)
        .open(m.path("fresh"))
        .unwrap();
    // SAFETY: a valid descriptor; fallocate only reads its arguments.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, 4096) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    // SAFETY: a valid path; mkfifo only reads it.
    let rc = unsafe { libc::mkfifo(c("fifo").as_ptr(), 0o644) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EPERM))
    );
    // Nothing above left a stray entry.
    let mut names: Vec<_> = fs::read_dir(&m.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "empty", "fresh", "other"]);
}

#[test]
fn shell_tools_work_on_the_mount() {
    let Some(m) = Mounted::start("fuse shell tools", ClusterSpec::default(), "") else {
        return;
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let script = format!(
        "cp -a {src} tree && diff -r {src} tree
         tar cf ../t.tar tree && mkdir x && tar xf ../t.tar -C x && diff -r tree x/tree
         test \"$(find tree -type f | wc -l)\" = \"$(find {src} -type f | wc -l)\"
         du -s tree >/dev/null
         dd if=/dev/urandom of=../r.bin bs=64k count=33 status=none
         dd if=../r.bin of=r.bin bs=1M status=none && cmp ../r.bin r.bin
         if command -v rsync >/dev/null; then rsync -a tree/ r/ && diff -r tree r; fi
         mkdir repo && cd repo && git init -q && cp -a {src}/proto . && git add -A
         git -c user.name=t -c user.email=t@t -c maintenance.auto=false commit -qm first && git log --oneline | wc -l",
        src = src.display()
    );
    let out = shell(&m.root, &script);
    assert_eq!(out.trim(), "1");
}

/// Random reads, writes, truncates and reopens of one file, checked against a copy in
/// memory; seeded (BENCHFS_FSX_SEED) and reproducible.
struct Exerciser {
    path: std::path::PathBuf,
    file: File,
    /// A copy of `file`'s descriptor for [`flush_meanwhile`].
    shared: std::sync::Arc<std::sync::Mutex<Option<File>>>,
    model: Vec<u8>,
    seed: u64,
    x: u64,
}

impl Exerciser {
    /// Largest offset an operation starts at.
    const SPAN: u64 = 6 * C as u64;

    fn next(&mut self, bound: u64) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x % bound.max(1)
    }

    fn open(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    fn write(&mut self, op: usize) {
        let off = self.next(Self::SPAN);
        let len = self.next(2 * C as u64) as usize + 1;
        let data = pattern(len, self.seed ^ op as u64);
        self.file.write_all_at(&data, off).unwrap();
        let end = off as usize + len;
        if self.model.len() < end {
            self.model.resize(end, 0);
        }
        self.model[off as usize..end].copy_from_slice(&data);
    }

    fn read(&mut self, context: &str) {
        let off = self.next(Self::SPAN);
        let len = self.next(2 * C as u64) as usize + 1;
        let mut buf = vec![0; len];
        let mut got = 0;
        while got < len {
            let n = self
                .file
                .read_at(&mut buf[got..], off + got as u64)
                .unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let start = (off as usize).min(self.model.len());
        let end = (off as usize + len).min(self.model.len());
        assert_eq!(got, end - start, "{context}: read length");
        assert!(
            buf[..got] == self.model[start..end],
            "{context}: read bytes"
        );
    }

    fn step(&mut self, op: usize) {
        let context = format!("seed {} op {op}", self.seed);
        match self.next(10) {
            0..=3 => self.write(op),
            4..=6 => self.read(&context),
            7 => {
                let size = self.next(Self::SPAN);
                self.file.set_len(size).unwrap();
                self.model.resize(size as usize, 0);
            }
            8 => {
                let len = self.file.metadata().unwrap().len();
                assert_eq!(len, self.model.len() as u64, "{context}: size");
            }
            _ => {
                // Close and reopen: what was written is what the servers publish.
                self.file.sync_all().unwrap();
                self.file = Self::open(&self.path);
                *self.shared.lock().unwrap() = Some(self.file.try_clone().unwrap());
                let len = fs::metadata(&self.path).unwrap().len();
                assert_eq!(len, self.model.len() as u64, "{context}");
            }
        }
    }
}

/// Closes copies of the exerciser's descriptor until `stop`, each close a FLUSH of its
/// handle at any time, on another thread of the mount, as a process started meanwhile (by
/// another test in CI) sends one when its copy closes at exec: a size such a FLUSH
/// published raced the exerciser's truncates and grew the file back past the cut.
fn flush_meanwhile(file: &std::sync::Mutex<Option<File>>, stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let copy = file
            .lock()
            .unwrap()
            .as_ref()
            .map(|f| f.try_clone().unwrap());
        drop(copy);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_seeded_exerciser_matches_a_model() {
    let Some(m) = Mounted::start("fuse exerciser", ClusterSpec::default(), "") else {
        return;
    };
    let env = |key: &str, default: u64| {
        std::env::var(key)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seed = env("BENCHFS_FSX_SEED", 0x5eed);
    let ops = env("BENCHFS_FSX_OPS", 3000) as usize;
    let path = m.path("fsx");
    File::create(&path).unwrap();
    let file = Exerciser::open(&path);
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(file.try_clone().unwrap())));
    let mut fsx = Exerciser {
        file,
        shared: shared.clone(),
        path,
        model: Vec::new(),
        seed,
        x: seed | 1,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| flush_meanwhile(&shared, &stop));
        // Stops the flusher also when a step fails, or the scope would wait for it forever.
        let _stop = StopOnDrop(&stop);
        for op in 0..ops {
            fsx.step(op);
        }
    });
    shared.lock().unwrap().take();
    drop(fsx.file);
    assert!(read(&fsx.path) == fsx.model, "seed {seed}: final contents");
    common::note(&format!(
        "fsx: {ops} operations, seed {seed}, final size {}",
        fsx.model.len()
    ));
}

#[test]
fn processes_write_files_and_append_to_one_at_once() {
    let Some(m) = Mounted::start("fuse concurrency", ClusterSpec::default(), "") else {
        return;
    };
    let writers: Vec<_> = (0..4)
        .map(|i| {
            Command::new("sh")
                .arg("-ec")
                .arg(format!(
                    "head -c {} /dev/zero | tr '\\0' '{}' > w{i}",
                    3 * C + i * 1000,
                    (b'a' + i as u8) as char
                ))
                .current_dir(&m.root)
                .spawn()
                .unwrap()
        })
        .collect();
    let appenders: Vec<_> = ["A", "B"]
        .iter()
        .map(|tag| {
            Command::new("sh")
                .arg("-ec")
                .arg(format!(
                    "i=0; while [ $i -lt 200 ]; do echo {tag}-$i-xxxxxxxxxxxxxxxx >> log; i=$((i+1)); done"
                ))
                .current_dir(&m.root)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in writers.into_iter().chain(appenders) {
        assert!(c.wait().unwrap().success());
    }
    for i in 0..4usize {
        let data = read(&m.path(&format!("w{i}")));
        assert_eq!(data.len(), 3 * C + i * 1000);
        assert!(data.iter().all(|&b| b == b'a' + i as u8));
    }
    let log = String::from_utf8(read(&m.path("log"))).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 400, "every append landed whole");
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), 400, "no append overwrote another");
    assert!(lines.iter().all(|l| l.ends_with("-xxxxxxxxxxxxxxxx")));
}

#[test]
fn reads_survive_a_killed_server_with_two_replicas() {
    let spec = ClusterSpec {
        replicas: 2,
        ..ClusterSpec::short_timeout()
    };
    let Some(mut m) = Mounted::start("fuse replicas", spec, "") else {
        return;
    };
    let data = pattern(8 * C + 3, 11);
    fs::write(m.path("r"), &data).unwrap();
    m.cluster.kill(1);
    assert!(read(&m.path("r")) == data);
    let mut f = File::open(m.path("r")).unwrap();
    f.seek(SeekFrom::Start(C as u64 * 5)).unwrap();
    let mut buf = vec![0; C];
    f.read_exact(&mut buf).unwrap();
    assert!(buf == data[5 * C..6 * C]);
}

#[test]
fn writes_after_a_failed_truncate_publish_their_size() {
    // A handle open across a truncate that failed after setting the size must publish
    // the size its writes reach past the new one; the failed range reads as the old bytes
    // or zeros, never bytes nobody wrote.
    let spec = ClusterSpec {
        replicas: 2,
        backend: "file",
        ..ClusterSpec::short_timeout()
    };
    let Some(mut m) = Mounted::start("fuse failed truncate", spec, "") else {
        return;
    };
    let old = pattern(8 * C, 12);
    fs::write(m.path("t"), &old).unwrap();
    let file_id = m.cluster.client().stat("/t").unwrap().file_id;
    let last = benchfs::placement::PlacementKey::Chunk { file_id, index: 7 };
    let missed = m.cluster.replicas_of(last)[0];
    let early = OpenOptions::new().write(true).open(m.path("t")).unwrap();
    m.cluster.kill(missed);
    let keep = C / 2 + 5;
    assert!(OpenOptions::new()
        .write(true)
        .open(m.path("t"))
        .and_then(|f| f.set_len(keep as u64))
        .is_err());
    m.cluster.restart(missed);
    let end = old.len() - 4;
    early.write_all_at(b"late", end as u64).unwrap();
    drop(early);
    for victim in 0..m.cluster.spec.servers {
        m.cluster.kill(victim);
        let got = common::files::read_file(&m.cluster.client(), "/t");
        assert_eq!(got.len(), old.len(), "with server {victim} down");
        assert!(got[..keep] == old[..keep] && &got[end..] == b"late");
        let foreign = (keep..end).find(|&i| got[i] != old[i] && got[i] != 0);
        assert_eq!(
            foreign, None,
            "with server {victim} down, bytes nobody wrote"
        );
        m.cluster.restart(victim);
    }
}

#[test]
fn signals_unmount_cleanly_and_a_stale_mount_is_refused_with_the_cure() {
    let Some(mut m) = Mounted::start("fuse signals", ClusterSpec::default(), "") else {
        return;
    };
    fs::write(m.path("kept"), b"kept").unwrap();
    let pid = m.child.as_ref().unwrap().id();
    let signal = |name: &str| {
        Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .unwrap()
    };
    // With a file open, the unmount is refused and the mount serves on; a later signal,
    // once it is closed, unmounts (the first refusal left every later signal ignored,
    // found by a hostile run).
    let open = fs::File::open(m.path("kept")).unwrap();
    signal("-TERM");
    let logged = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !m.log_text().contains("unmount failed") {
        assert!(std::time::Instant::now() < logged, "{}", m.log_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(is_mounted(&m.root));
    assert_eq!(read(&m.path("kept")), b"kept");
    drop(open);
    // SIGTERM: unmounts, exits 0.
    signal("-TERM");
    let mut child = m.child.take().unwrap();
    let exited = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > exited {
            child.kill().unwrap();
            let _ = Command::new("fusermount3").arg("-u").arg(&m.root).status();
            panic!("the mount outlived a second SIGTERM: {}", m.log_text());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", m.log_text());
    assert!(!is_mounted(&m.root));

    // fusermount3 -u: the same.
    m.child = Some(spawn_mount(&m.cluster, &m.root, "", &m.log));
    m.wait_mounted();
    assert_eq!(read(&m.path("kept")), b"kept");
    assert_eq!(m.unmount(), Some(0), "{}", m.log_text());
    assert!(!is_mounted(&m.root));

    // kill -9 leaves a stale mount: `benchfs mount` says how to clear it.
    m.child = Some(spawn_mount(&m.cluster, &m.root, "", &m.log));
    m.wait_mounted();
    let mut child = m.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(errno(fs::metadata(m.path("kept"))), libc::ENOTCONN);
    let (mounted, err) = mount_again(&m);
    assert!(!mounted);
    assert!(
        err.contains("stale") && err.contains("fusermount3 -u"),
        "{err}"
    );
    let cleared = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.root)
        .status()
        .unwrap();
    assert!(cleared.success());
    m.child = Some(spawn_mount(&m.cluster, &m.root, "", &m.log));
    m.wait_mounted();
    assert_eq!(read(&m.path("kept")), b"kept");
}

#[test]
fn bad_mount_options_are_refused_before_mounting() {
    if !common::mount::fuse_available("fuse options") {
        return;
    }
    let cluster = common::Cluster::start(ClusterSpec {
        servers: 1,
        ..ClusterSpec::default()
    });
    let root = cluster.dir.path().join("mnt");
    fs::create_dir(&root).unwrap();
    for (options, says) in [
        ("threads=0", "thread count"),
        ("max_write=3", "power of two"),
        ("bogus", "unknown option"),
        ("direct_io,writeback_cache", "conflicts with direct_io"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_benchfs"))
            .arg("mount")
            .arg(&root)
            .arg("--config")
            .arg(&cluster.config_path)
            .args(["-o", options])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{options}: {err}"
        );
        assert!(!is_mounted(&root));
    }
}

#[test]
fn a_cluster_whose_servers_are_all_gone_is_not_mounted() {
    // Found by a hostile-user run: the mount came up (status 0) and every call gave EIO.
    if !common::mount::fuse_available("fuse with no server") {
        return;
    }
    let mut cluster = common::Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::default()
    });
    // kill -9 leaves their registry entries.
    cluster.kill(0);
    cluster.kill(1);
    let root = cluster.dir.path().join("mnt");
    fs::create_dir(&root).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_benchfs"))
        .arg("mount")
        .arg(&root)
        .arg("--config")
        .arg(&cluster.config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted with no server: {err}");
    assert!(
        err.contains("no server of the registry") && err.contains("node0"),
        "{err}"
    );
    assert!(!is_mounted(&root));
}

/// A second mount of `m`'s cluster with `options`: its root and its process.
fn second_mount(m: &Mounted, options: &str) -> (std::path::PathBuf, std::process::Child) {
    let root2 = m.cluster.dir.path().join("mnt2");
    std::fs::create_dir_all(&root2).unwrap();
    let log2 = m.cluster.dir.path().join("mount2.log");
    let mut second = spawn_mount(&m.cluster, &root2, options, &log2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !is_mounted(&root2) {
        assert!(
            second.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline,
            "no second mount: {}",
            std::fs::read_to_string(&log2).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (root2, second)
}

/// Appends `records` to `path`, one write each, through one O_APPEND handle.
fn append_records(path: &Path, records: impl Iterator<Item = String>) {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    for record in records {
        f.write_all(record.as_bytes()).unwrap();
    }
}

/// Appends `records(0)` through `m` and `records(1)` through the second mount at `root2`
/// at once, one process each; unmounts the second, then checks that `/f` past its first
/// `skip` lines holds every record once, whole.
fn append_at_once_through_both<I: Iterator<Item = String>>(
    m: &Mounted,
    root2: &Path,
    mut second: std::process::Child,
    records: impl Fn(usize) -> I + Sync,
    skip: usize,
) {
    let records = &records;
    std::thread::scope(|s| {
        for (mount, root) in [m.root.as_path(), root2].into_iter().enumerate() {
            s.spawn(move || append_records(&root.join("f"), records(mount)));
        }
    });
    let got = common::files::read_file(&m.cluster.client(), "/f");
    let _ = Command::new("fusermount3").arg("-u").arg(root2).status();
    let _ = second.wait();
    let got = String::from_utf8_lossy(&got);
    let lines: Vec<&str> = got.lines().skip(skip).collect();
    let want: Vec<String> = records(0).chain(records(1)).collect();
    common::files::assert_holds_each_record_once(&lines, &want);
}

#[test]
fn appends_through_two_kernel_cache_mounts_at_once_keep_each_record_whole() {
    // Found by a hostile run: under kernel_cache the kernel cuts a write that starts
    // inside a page it does not hold at that page's end, each piece claimed its own range
    // as an append, and the other mount's records landed between the pieces (472 of 600
    // records of 5000 bytes torn). An appending handle does direct I/O: one write, one
    // request, up to max_write.
    let options = "kernel_cache";
    let Some(mut m) = Mounted::start("fuse kernel_cache appends", ClusterSpec::default(), options)
    else {
        return;
    };
    let (root2, second) = second_mount(&m, options);
    let records = |mount: usize| {
        let fill = char::from(b'a' + mount as u8);
        (0..100).map(move |i| format!("{mount}:{i:04}:{}\n", fill.to_string().repeat(4990)))
    };
    append_at_once_through_both(&m, &root2, second, records, 0);
    m.unmount();
}

#[test]
fn appends_from_two_mounts_at_once_leave_the_replicas_records_alike() {
    // Found by a hostile-user run: with two replicas, appends from two mounts at once left
    // the second replica's record 100 bytes longer, 5 times in 5 on fresh mounts (each
    // mount counted its appends as a size to publish, so its next claim asked for a floor
    // that a replica behind the other mount's claim placed differently).
    let spec = ClusterSpec {
        servers: 3,
        replicas: 2,
        ..ClusterSpec::default()
    };
    let Some(mut m) = Mounted::start("fuse appends with replicas", spec, "") else {
        return;
    };
    let (root2, second) = second_mount(&m, "");
    File::create(m.root.join("f")).unwrap();
    let records = |mount: usize| (0..300).map(move |i| format!("{mount}:{i:04}:{:>92}\n", ""));
    append_at_once_through_both(&m, &root2, second, records, 0);
    let sizes: Vec<Option<u64>> = common::rpc::records(&m.cluster, "/f")
        .into_iter()
        .map(|r| r.map(|meta| meta.size))
        .collect();
    assert_eq!(
        sizes,
        [Some(60_000), Some(60_000)],
        "the replicas' records of /f"
    );
    m.unmount();
}

#[test]
fn appends_from_two_mounts_all_land_one_after_another_and_at_once() {
    // Regression (found by a hostile-user run): the kernel puts an appending write at the
    // size it cached, so `echo one >> m1/f; echo two >> m2/f; echo three >> m1/f` left
    // "one three": the third append went over the second, which the first mount's attribute
    // cache had not seen. And (another run) two processes appending at once through two
    // mounts wrote over each other's records, every write acknowledged. An appending write
    // now claims its range on the record.
    let Some(mut m) = Mounted::start("fuse appends across mounts", ClusterSpec::default(), "")
    else {
        return;
    };
    let (root2, second) = second_mount(&m, "");
    let mut want = String::new();
    for i in 0..6 {
        let line = format!("line {i}\n");
        let root = if i % 2 == 0 { &m.root } else { &root2 };
        append_records(&root.join("f"), std::iter::once(line.clone()));
        want.push_str(&line);
    }
    let fs = m.cluster.client();
    let got = common::files::read_file(&fs, "/f");
    assert_eq!(String::from_utf8_lossy(&got), want);
    // At once: one process per mount, each appending its own records through one handle.
    let records = |mount: usize| (0..150).map(move |i| format!("{mount}:{i:04}:{:>40}\n", ""));
    append_at_once_through_both(&m, &root2, second, records, 6);
    m.unmount();
}

#[test]
fn an_open_file_renamed_by_another_client_still_takes_fstat_ftruncate_and_fchmod() {
    // Found by a hostile run: once another mount renamed an open file (or its directory),
    // fstat, ftruncate and fchmod on the descriptor failed with ENOENT until this mount
    // looked the new name up; `cat /dev/null >&fd` failed.
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let Some(mut m) = Mounted::start("fuse rename under an open file", ClusterSpec::default(), "")
    else {
        return;
    };
    let other = m.cluster.client();
    std::fs::create_dir(m.root.join("X9")).unwrap();
    let mut f = std::fs::File::create(m.root.join("X9/f")).unwrap();
    f.write_all(b"hello world").unwrap();
    f.flush().unwrap();
    other.rename("/X9/f", "/X9/g").unwrap();
    assert_eq!(f.metadata().expect("fstat after a rename").len(), 11);
    f.set_len(5).expect("ftruncate after a rename");
    other.rename("/X9", "/Y9").unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .expect("fchmod after a directory rename");
    assert_eq!(
        f.metadata().expect("fstat after a directory rename").len(),
        5
    );
    f.write_all(b"!").unwrap();
    drop(f);
    // At the descriptor's position, past the cut, as on any file system.
    assert_eq!(
        common::files::read_file(&other, "/Y9/g"),
        b"hello\0\0\0\0\0\0!"
    );
    assert_eq!(other.stat("/Y9/g").unwrap().mode & 0o777, 0o600);
    // Removed by the other client: fstat says the descriptor is stale, as its reads and
    // writes do (it said ENOENT, found by a hostile run).
    let f = std::fs::File::open(m.root.join("Y9/g")).unwrap();
    other.unlink("/Y9/g").unwrap();
    // Past the kernel's attribute cache (attr_timeout, 1 s by default), so fstat asks.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(f.metadata().unwrap_err().raw_os_error(), Some(libc::ESTALE));
    drop(f);
    m.unmount();
}

#[test]
fn a_reader_open_before_an_append_in_the_same_mount_reads_it() {
    // Regression (found by a hostile-user run): `tail -f` on the mount never saw a line
    // appended after it opened the file: reads stopped at the size the handle opened
    // with. Within one mount every process sees every write at once.
    let Some(mut m) = Mounted::start("fuse tail", ClusterSpec::default(), "") else {
        return;
    };
    let path = m.path("tailed");
    fs::write(&path, b"line1\n").unwrap();
    let reader = File::open(&path).unwrap();
    let mut buf = vec![0u8; 64];
    assert_eq!(reader.read_at(&mut buf, 0).unwrap(), 6);
    let mut appender = OpenOptions::new().append(true).open(&path).unwrap();
    appender.write_all(b"line2\n").unwrap();
    drop(appender);
    let n = reader.read_at(&mut buf, 6).unwrap();
    assert_eq!(&buf[..n], b"line2\n");
    drop(reader);
    m.unmount();
}

#[test]
fn writeback_cache_keeps_bytes_of_a_handle_another_one_closed_after() {
    // Regression (found by a hostile-user run): with the writeback cache, a second handle
    // that wrote and closed left the first one's size at what it opened with (0), so the
    // page the kernel read back to merge a small write into came back empty and 4086
    // bytes of the first write were written back as zeros.
    let Some(mut m) = Mounted::start("fuse writeback", ClusterSpec::default(), "writeback_cache")
    else {
        return;
    };
    let path = m.path("f");
    let first = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    first.write_all_at(&[b'a'; 100_000], 0).unwrap();
    let second = OpenOptions::new().write(true).open(&path).unwrap();
    second.write_all_at(&[b'b'; 50_000], 20_000).unwrap();
    drop(second);
    first.write_all_at(&[b'c'; 10], 0).unwrap();
    drop(first);
    let mut want = vec![b'a'; 100_000];
    want[20_000..70_000].fill(b'b');
    want[..10].fill(b'c');
    let fs = m.cluster.client();
    let got = common::files::read_file(&fs, "/f");
    let zeros = got.iter().filter(|b| **b == 0).count();
    assert!(got == want, "{} bytes, {zeros} of them zeros", got.len());
    m.unmount();
}

#[test]
fn a_second_mount_on_a_mounted_point_is_refused() {
    // Found by a hostile-user run: a second `benchfs mount` on the same point succeeded and
    // stacked on the first, hiding it and its open files.
    let Some(mut m) = Mounted::start("fuse second mount", ClusterSpec::default(), "") else {
        return;
    };
    fs::write(m.path("kept"), b"first mount").unwrap();
    let (mounted, err) = mount_again(&m);
    assert!(!mounted && err.contains("already holds"), "{err}");
    let stacked = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(m.root.to_str().unwrap()))
        .count();
    assert_eq!(stacked, 1, "one mount on {}", m.root.display());
    assert_eq!(fs::read(m.path("kept")).unwrap(), b"first mount");
    m.unmount();
}

#[test]
fn a_create_racing_a_removal_of_its_name_makes_the_file() {
    // Found by a hostile run: `echo hi > x` beside a loop of `rm -f x` in one mount failed
    // with ENOENT in about one create of 15, though the directory was always there. The
    // kernel cuts an O_TRUNC open of a name it knows by a setattr, which met the removed
    // file and said ENOENT (now ESTALE, on which the kernel looks the name up again and
    // creates it); a create that met the file, removed before it could look at it, gave
    // ENOENT too (now it makes the file again).
    let Some(m) = Mounted::start("fuse create beside rm", ClusterSpec::default(), "") else {
        return;
    };
    let path = m.root.join("x");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::thread::scope(|s| {
        s.spawn(|| {
            let _stop = StopOnDrop(&stop);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(&path);
            }
        });
        let _stop = StopOnDrop(&stop);
        let mut failures = Vec::new();
        for _ in 0..1500 {
            if let Err(e) = std::fs::write(&path, b"hi\n") {
                failures.push(e.to_string());
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of 1500 creates failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn a_file_closed_then_unlinked_leaves_nothing_behind() {
    // Found by a hostile run: the kernel releases a closed file's handle after close(2)
    // returns, so an unlink right after it may still find the file open and move it aside
    // for its last close to remove; when that close came while the file moved, before
    // the mount knew the hidden name, nothing removed it: `.benchfs-unlinked-*` files
    // stayed for good (36 in 300 rounds beside another writer).
    let spec = ClusterSpec {
        servers: 3,
        replicas: 2,
        chunk_size: 4096,
        rdma_threshold: 4096,
        ..ClusterSpec::default()
    };
    let Some(m) = Mounted::start("fuse unlink after close", spec, "") else {
        return;
    };
    let data = pattern(173_389, 9);
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    };
    let (quiet, busy) = (m.path("quiet"), m.path("busy"));
    fs::create_dir(&quiet).unwrap();
    fs::create_dir(&busy).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Another writer keeps the mount's threads busy, so releases come late.
        s.spawn(|| {
            let path = busy.join("f");
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let file = open(&path);
                file.write_all_at(&data[..70_000], 1000).unwrap();
                file.set_len(4097).unwrap();
                drop(file);
                fs::remove_file(&path).unwrap();
            }
        });
        let _stop = StopOnDrop(&done);
        let path = quiet.join("f");
        for _ in 0..300 {
            open(&path).write_all_at(&data, 0).unwrap();
            fs::remove_file(&path).unwrap();
        }
    });
    // The last file of each may still wait, hidden, for its release: a moment, not for good.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for dir in [quiet, busy] {
        let left = || -> Vec<_> {
            fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        while left().len() == 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(left().is_empty(), "{}: {:?}", dir.display(), left());
        fs::remove_dir(&dir).unwrap();
    }
}

/// Every file under `dirs` (recursively) through the native client: name → bytes.
fn files_under(fs: &benchfs::blocking::BenchFS, dirs: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending: Vec<String> = dirs.to_vec();
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs.readdir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = format!("{dir}/{}", entry.name);
            if entry.meta.is_dir() {
                pending.push(path);
            } else {
                found.push((entry.name, common::files::read_file(fs, &path)));
            }
        }
    }
    found
}

/// The name of `from` and `to` the tree is not under holds what a stopped rename left
/// (copies that never showed, or the old records): a directory made there starts empty.
fn mkdir_where_the_tree_is_not(fs: &benchfs::blocking::BenchFS, from: &str, to: &str) {
    for name in [from, to] {
        if fs.stat(name).is_err() {
            fs.mkdir(name, 0o755).unwrap();
            let left: Vec<_> = fs
                .readdir(name)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            assert!(left.is_empty(), "{name} made anew lists {left:?}");
        }
    }
}

#[test]
fn a_mount_killed_during_a_directory_rename_loses_no_file() {
    // Found by a hostile-user run: a mount killed while `mv` renamed a tree of 10000 files
    // lost half of them: the old records went while the new name did not exist yet. The
    // mount is killed here as soon as the rename's copies are all made (a copy's record
    // answers a stat by its path even while its directory does not exist), where that
    // happened.
    let Some(mut m) = Mounted::start("fuse rename kill", ClusterSpec::default(), "") else {
        return;
    };
    const FILES: usize = 3000;
    const SUBDIRS: usize = 15;
    let fs = m.cluster.client();
    for round in 0..4 {
        let (from, to) = (format!("/r{round}/src"), format!("/r{round}/dst"));
        fs.mkdir(&format!("/r{round}"), 0o755).unwrap();
        fs.mkdir(&from, 0o755).unwrap();
        for sub in 0..SUBDIRS {
            fs.mkdir(&format!("{from}/s{sub}"), 0o755).unwrap();
        }
        for i in 0..FILES {
            let path = format!("{from}/s{}/f{i}", i % SUBDIRS);
            common::files::write_file(&fs, &path, i.to_string().as_bytes());
        }
        if round == 2 {
            // An empty directory the rename replaces.
            fs.mkdir(&to, 0o755).unwrap();
        }
        // The rename copies parents first, each directory's entries in name order: this
        // is the last copy (directory s9 lists last, and f999 last in it).
        let last_copy = format!("{to}/s9/f999");
        // -T: onto an existing directory too, as rename(2) (not into it).
        let mut mv = Command::new("mv")
            .arg("-T")
            .arg(m.path(&from))
            .arg(m.path(&to))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while fs.stat(&last_copy).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut mount = m.child.take().unwrap();
        mount.kill().unwrap();
        mount.wait().unwrap();
        mv.wait().unwrap();
        let cleared = Command::new("fusermount3")
            .arg("-uz")
            .arg(&m.root)
            .status()
            .unwrap();
        assert!(cleared.success());
        let mut found = files_under(&fs, &[from.clone(), to.clone()]);
        for (name, bytes) in &found {
            assert_eq!(&name.as_bytes()[1..], &bytes[..], "{name} read wrong bytes");
        }
        found.sort();
        found.dedup();
        assert_eq!(
            found.len(),
            FILES,
            "round {round}: files under neither name once the mount was killed"
        );
        mkdir_where_the_tree_is_not(&fs, &from, &to);
        m.child = Some(spawn_mount(&m.cluster, &m.root, "", &m.log));
        m.wait_mounted();
    }
}

#[test]
fn writes_and_reads_after_another_clients_cut_keep_to_the_file() {
    // Found by a hostile run: a descriptor of a file another client then cut wrote inside
    // the length it knew; write, fsync and close succeeded, and the bytes were lost past
    // the end the cut left. And one that read after the cut read zeros to the old end.
    let Some(mut m) = Mounted::start("fuse write after a cut", ClusterSpec::default(), "") else {
        return;
    };
    let api = m.cluster.client();
    let old = common::pattern(6 << 20, 3);
    fs::write(m.path("cut"), &old).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("cut"))
        .unwrap();
    api.truncate("/cut", 100).unwrap();
    f.write_at(b"ZZZZ", 200).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut want = old[..100].to_vec();
    want.resize(200, 0);
    want.extend_from_slice(b"ZZZZ");
    assert_eq!(api.stat("/cut").unwrap().size, 204);
    assert!(common::files::read_file(&api, "/cut") == want);
    // A descriptor open before the cut reads to it, not zeros to the old end.
    fs::write(m.path("cut"), &old).unwrap();
    let f = File::open(m.path("cut")).unwrap();
    api.truncate("/cut", 100).unwrap();
    let mut buf = vec![0xffu8; 1 << 20];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(n, 100, "the read ends at the cut");
    assert!(buf[..n] == old[..100]);
    assert_eq!(f.read_at(&mut buf, 100).unwrap(), 0);
    drop(f);
    m.unmount();
}

#[test]
fn a_write_after_another_clients_cut_is_kept_below_the_descriptors_furthest_write() {
    // A mount's close published only its descriptor's furthest write: when that one went
    // with another client's cut, a later write below it was lost (size 0), and its bytes
    // came back inside a hole when the file grew again.
    let Some(mut m) = Mounted::start("fuse write below a cut one", ClusterSpec::default(), "")
    else {
        return;
    };
    let api = m.cluster.client();
    for (round, at) in [150_000u64, 10].into_iter().enumerate() {
        let name = format!("tc{round}");
        let f = File::create(m.path(&name)).unwrap();
        f.write_all_at(&common::pattern(200_000, 3), 0).unwrap();
        api.truncate(&format!("/{name}"), 0).unwrap();
        f.write_all_at(&[b'a'; 1000], at).unwrap();
        drop(f);
        let mut want = vec![0u8; at as usize];
        want.extend_from_slice(&[b'a'; 1000]);
        let got = common::files::read_file(&api, &format!("/{name}"));
        assert_eq!(
            got.len(),
            want.len(),
            "{name}: the size reaches the later write"
        );
        assert!(
            got == want,
            "{name}: zeros up to the later write, then its bytes"
        );
        let grown_to = 5000.max(at + 2000);
        let fd = api
            .open(&format!("/{name}"), benchfs::blocking::OpenFlags::WRITE, 0)
            .unwrap();
        api.pwrite(fd, b"Z", grown_to).unwrap();
        api.close(fd).unwrap();
        want.resize(grown_to as usize, 0);
        want.push(b'Z');
        let grown = common::files::read_file(&api, &format!("/{name}"));
        assert!(grown == want, "{name}: no bytes of the cut write come back");
    }
    m.unmount();
}

#[test]
fn a_reader_open_before_another_client_grew_the_file_reads_the_growth() {
    // Regression (hostile run): a handle of one mount kept reading up to the size it
    // opened with while stat showed what another client (a mount, the API) wrote since,
    // for a file in its record and for one in chunks.
    let Some(mut m) = Mounted::start("fuse growth elsewhere", ClusterSpec::default(), "") else {
        return;
    };
    let api = m.cluster.client();
    for (name, first, more) in [
        ("small", 6, 6),
        ("large", 10_000, 200_000),
        ("moves", 6, 200_000),
    ] {
        let data = common::pattern(first + more, 5);
        fs::write(m.path(name), &data[..first]).unwrap();
        let reader = File::open(m.path(name)).unwrap();
        let mut buf = vec![0u8; data.len() + 4096];
        assert_eq!(reader.read_at(&mut buf, 0).unwrap(), first, "{name}");
        let path = format!("/{name}");
        let fd = api
            .open(&path, benchfs::blocking::OpenFlags::WRITE, 0)
            .unwrap();
        api.pwrite(fd, &data[first..], first as u64).unwrap();
        api.close(fd).unwrap();
        // Past the mount's attribute timeout, stat shows the new size to the kernel.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(fs::metadata(m.path(name)).unwrap().len(), data.len() as u64);
        let mut got = Vec::new();
        let mut at = 0;
        loop {
            let n = reader.read_at(&mut buf, at).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            at += n as u64;
        }
        assert!(
            got == data,
            "{name}: read {} of {} bytes",
            got.len(),
            data.len()
        );
    }
    m.unmount();
}

#[test]
fn reading_a_file_to_its_end_right_after_its_open_asks_no_record() {
    // Review finding: every read past the size the mount's handles knew asked the record
    // (a stat), so `cat` of a small file with chunks cost two requests more than its
    // chunk reads (the kernel asks 128 KiB, then at the end). A handle asks no more than
    // once a second, as the API's handles do; the growth test above covers the asking.
    let spec = ClusterSpec {
        orphan_sweep_secs: 0,
        ..ClusterSpec::default()
    };
    let Some(mut m) = Mounted::start("fuse read to the end", spec, "") else {
        return;
    };
    let api = m.cluster.client();
    common::files::stats(&api);
    for (name, len) in [("one-chunk", 10_000), ("three-chunks", 2 * C + 100)] {
        let data = pattern(len, 9);
        fs::write(m.path(name), &data).unwrap();
        let mut file = File::open(m.path(name)).unwrap();
        let mut got = Vec::new();
        // Reads as `cat` makes them (read_to_end would stat the file first).
        let asked = common::files::requests_of(&api, || {
            let mut buf = vec![0u8; 128 << 10];
            loop {
                match file.read(&mut buf).unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        assert!(got == data, "{name}: read {} of {len} bytes", got.len());
        assert!(
            asked
                .iter()
                .all(|&(op, _)| op == benchfs_proto::OpCode::ReadChunk),
            "{name}: reading to the end asked {asked:?}"
        );
    }
    m.unmount();
}

#[test]
fn a_time_before_1970_is_refused_not_stored_as_1970() {
    // Found by a hostile run: `touch -d 1960-01-01` succeeded and the file read back
    // 1970-01-01 (records keep times since the epoch).
    let Some(mut m) = Mounted::start("fuse times before 1970", ClusterSpec::default(), "") else {
        return;
    };
    let path = m.path("old");
    fs::write(&path, b"x").unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let kept = fs::metadata(&path).unwrap().modified().unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let refused = file.set_modified(std::time::UNIX_EPOCH - day);
    assert_eq!(errno(refused), libc::EINVAL);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), kept);
    let later = std::time::UNIX_EPOCH + 365 * day;
    file.set_modified(later).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), later);
    drop(file);
    m.unmount();
}

#[test]
fn an_append_after_another_clients_cut_lands_at_the_cut() {
    // Found by a hostile run: the mount claimed an append's range past the size its kernel
    // had cached, so after another client truncated the file the append landed at the old
    // end, over a hole of zeros, and undid the cut.
    let Some(mut m) = Mounted::start("fuse append after a cut", ClusterSpec::default(), "") else {
        return;
    };
    let other = m.cluster.client();
    let path = m.root.join("g");
    std::fs::write(&path, "AAAAAAAAAAAAAAAAAAAA\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap().len(), 21);
    other.truncate("/g", 0).unwrap();
    append_records(&path, std::iter::once("after\n".to_string()));
    assert_eq!(common::files::read_file(&other, "/g"), b"after\n");
    m.unmount();
}

#[test]
fn an_open_by_name_finds_what_another_client_put_there_since_the_kernel_looked() {
    // Found by a hostile run: within the kernel's entry timeout, an open by a name that
    // another client had moved opened the moved file under its new name. Long timeouts
    // keep the kernel's entries for the old names however slow the host.
    let options = "entry_timeout=30,attr_timeout=30";
    let Some(mut m) = Mounted::start("fuse renamed names", ClusterSpec::default(), options) else {
        return;
    };
    let other = m.cluster.client();
    // Moved over another file: the open makes the name again, the moved file stays.
    std::fs::write(m.root.join("f4"), "f4\n").unwrap();
    std::fs::write(m.root.join("f2"), "f2\n").unwrap();
    assert_eq!(read(&m.root.join("f2")), b"f2\n");
    other.rename("/f2", "/f4").unwrap();
    std::fs::write(m.root.join("f2"), "new f2\n").unwrap();
    assert_eq!(common::files::read_file(&other, "/f2"), b"new f2\n");
    assert_eq!(common::files::read_file(&other, "/f4"), b"f2\n");
    // Moved away and made again: a read opens the new file.
    std::fs::write(m.root.join("a"), "old a\n").unwrap();
    assert_eq!(read(&m.root.join("a")), b"old a\n");
    other.rename("/a", "/b").unwrap();
    common::files::write_file(&other, "/a", b"new a\n");
    assert_eq!(read(&m.root.join("a")), b"new a\n");
    // A log rotated by another client: the next append goes to the new log.
    std::fs::write(m.root.join("log"), "first\n").unwrap();
    assert_eq!(read(&m.root.join("log")), b"first\n");
    other.rename("/log", "/log.1").unwrap();
    common::files::write_file(&other, "/log", b"");
    append_records(&m.root.join("log"), std::iter::once("second\n".to_string()));
    assert_eq!(common::files::read_file(&other, "/log"), b"second\n");
    assert_eq!(common::files::read_file(&other, "/log.1"), b"first\n");
    // The same with a writer of the log open here, whose unpublished writes make the
    // kernel ask the node's attributes (which find the file at its new name) first.
    let mut writer = OpenOptions::new()
        .append(true)
        .open(m.root.join("log"))
        .unwrap();
    writer.write_all(b"third\n").unwrap();
    other.rename("/log", "/log.2").unwrap();
    common::files::write_file(&other, "/log", b"");
    append_records(&m.root.join("log"), std::iter::once("fourth\n".to_string()));
    drop(writer);
    assert_eq!(common::files::read_file(&other, "/log"), b"fourth\n");
    assert_eq!(
        common::files::read_file(&other, "/log.2"),
        b"second\nthird\n"
    );
    // The new name looked up here first: the old one still opens what it holds now.
    std::fs::write(m.root.join("n"), "old n\n").unwrap();
    assert_eq!(read(&m.root.join("n")), b"old n\n");
    other.rename("/n", "/n.old").unwrap();
    common::files::write_file(&other, "/n", b"new n\n");
    assert_eq!(std::fs::metadata(m.root.join("n.old")).unwrap().len(), 6);
    assert_eq!(read(&m.root.join("n")), b"new n\n");
    assert_eq!(read(&m.root.join("n.old")), b"old n\n");
    // A file still open follows its rename: its descriptor is the file's, not the name's,
    // and so is an open through its link in /proc, which has no name to look up again.
    let mut open = std::fs::File::open(m.root.join("b")).unwrap();
    other.rename("/b", "/c").unwrap();
    let mut held = String::new();
    std::io::Read::read_to_string(&mut open, &mut held).unwrap();
    assert_eq!(held, "old a\n");
    assert_eq!(open.metadata().unwrap().len(), 6);
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&open));
    assert_eq!(read(Path::new(&link)), b"old a\n");
    drop(open);
    m.unmount();
}

#[test]
fn names_another_client_removed_and_made_again_open_at_once() {
    // Found by a hostile run: for as long as the kernel kept its entry for a name (a
    // second), an O_CREAT open of a file another client had removed failed with ENOENT,
    // and a listing of a directory it had removed and made again with ESTALE.
    let Some(mut m) = Mounted::start("fuse stale names", ClusterSpec::default(), "") else {
        return;
    };
    let other = m.cluster.client();
    let file = m.root.join("h");
    std::fs::write(&file, "old\n").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"old\n");
    other.unlink("/h").unwrap();
    append_records(&file, std::iter::once("new\n".to_string()));
    assert_eq!(common::files::read_file(&other, "/h"), b"new\n");
    // A handle of a file another client removed: its writes and its close say ESTALE (the
    // close said ENOENT).
    {
        use std::io::Write;
        use std::os::fd::IntoRawFd;
        let mut f = std::fs::File::create(m.root.join("u")).unwrap();
        f.write_all(b"abc").unwrap();
        other.unlink("/u").unwrap();
        assert_eq!(errno(f.write_all(b"def")), libc::ESTALE);
        // SAFETY: the descriptor is this test's own, closed once.
        let closed = unsafe { libc::close(f.into_raw_fd()) };
        let close_errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((closed, close_errno), (-1, Some(libc::ESTALE)));
    }
    // Not made again: the open says what it is.
    other.unlink("/h").unwrap();
    let gone = std::fs::File::open(&file).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));

    let dir = m.root.join("D");
    std::fs::create_dir(&dir).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    other.rmdir("/D").unwrap();
    other.mkdir("/D", 0o755).unwrap();
    common::files::write_file(&other, "/D/x", b"x");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("a listing of the directory made again")
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["x"]);
    m.unmount();
}

#[test]
fn an_open_after_another_clients_close_sees_the_size_it_published() {
    // Found by a hostile-user run: within a second of this mount's last look at a file
    // (ls -l), an open after another client's close still gave the old size to fstat and
    // SEEK_END, from the kernel's attribute cache, so a writer seeking to the end wrote
    // over the other client's closed bytes (close-to-open broken; git committed stale
    // copies).
    let Some(mut m) = Mounted::start("fuse close-to-open size", ClusterSpec::default(), "") else {
        return;
    };
    let path = m.path("f");
    fs::write(&path, b"short\n").unwrap();
    let other = m.cluster.client();
    for round in 0..3 {
        // This mount looks at the file: the kernel keeps its attributes for a second.
        let seen = fs::metadata(&path).unwrap().len();
        let closed = format!("{round}: {}\n", "x".repeat(100 * (round + 1)));
        assert_ne!(seen, closed.len() as u64);
        common::files::write_file(&other, "/f", closed.as_bytes());
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let size = closed.len() as u64;
        assert_eq!(
            f.metadata().unwrap().len(),
            size,
            "round {round}: fstat after open"
        );
        assert_eq!(
            f.seek(SeekFrom::End(0)).unwrap(),
            size,
            "round {round}: SEEK_END"
        );
        f.write_all(b"<appended>\n").unwrap();
        drop(f);
        let got = common::files::read_file(&other, "/f");
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("{closed}<appended>\n"),
            "round {round}"
        );
    }
    m.unmount();
}

#[test]
fn a_file_unlinked_while_open_never_takes_or_removes_another_files_name() {
    // Found by a hostile-user run: a file removed while open moved aside to
    // `.benchfs-unlinked-<inode>` over any file of that name, and its last close removed
    // whatever was there; a user's own file of such a name was removed at its close.
    let Some(mut m) = Mounted::start("fuse hidden names", ClusterSpec::default(), "") else {
        return;
    };
    let f = m.path("f");
    fs::write(&f, b"removed while open").unwrap();
    let taken = m.path(&format!(
        ".benchfs-unlinked-{:x}",
        fs::metadata(&f).unwrap().ino()
    ));
    fs::write(&taken, b"a user's file").unwrap();
    let mut open = File::open(&f).unwrap();
    fs::remove_file(&f).unwrap();
    assert_eq!(read(&taken), b"a user's file");
    let mut held = String::new();
    open.read_to_string(&mut held).unwrap();
    assert_eq!(held, "removed while open", "the open file still reads");
    drop(open);
    // The kernel sends the last close (RELEASE) after close(2) returned.
    let names = || -> Vec<String> {
        fs::read_dir(&m.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while names().len() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        names().len(),
        1,
        "the removed file is gone at its last close: {:?}",
        names()
    );
    assert_eq!(read(&taken), b"a user's file", "the last close left it");
    // A file of such a name that was never hidden outlives its own close (which the
    // kernel sends after close(2) returned: given time to arrive).
    drop(File::open(&taken).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&taken), b"a user's file");
    m.unmount();
}

#[test]
fn a_write_by_another_user_clears_the_set_id_bits() {
    // Found by a hostile-user run: a write by an unprivileged user left the set-user-ID
    // and set-group-ID bits (Linux clears them, so a writable set-ID program cannot take
    // new contents and stay set-ID).
    let Some(mut m) = Mounted::start("fuse set-ID bits", ClusterSpec::default(), "allow_other")
    else {
        return;
    };
    // The user the writes run as must reach the mount.
    fs::set_permissions(m.cluster.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let f = m.path("sx");
    fs::write(&f, b"x\n").unwrap();
    let as_nobody = |script: &str| {
        let status = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-ec",
            ])
            .arg(script)
            .current_dir(&m.root)
            .status()
            .expect("setpriv (util-linux)");
        assert!(status.success(), "{script}");
    };
    let mode_of = |f: &Path| fs::metadata(f).unwrap().permissions().mode() & 0o7777;
    for (mode, write, after) in [
        (0o6777, "echo y >> sx", 0o777),
        (
            0o6777,
            "printf z | dd of=sx bs=1 seek=1 conv=notrunc 2>/dev/null",
            0o777,
        ),
        // Set-group-ID without group execute marks mandatory locking, not a program.
        (0o6767, "echo y >> sx", 0o2767),
    ] {
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
        as_nobody(write);
        assert_eq!(mode_of(&f), after, "mode {mode:o} after {write:?}");
    }
    // Root's writes keep them.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"root\n")
        .unwrap();
    assert_eq!(mode_of(&f), 0o6777);
    m.unmount();
}
