//! Several clients at once, each on its own thread, against real `benchfsd` processes:
//! distinct files, disjoint ranges of one file, and a race to create the same names.

mod common;

use std::sync::Barrier;

use benchfs::blocking::{BenchFS, OpenFlags};
use benchfs::config::ServerConfig;
use common::files::{assert_holds_each_record_once, read_file, write_file, C};
use common::{pattern, Cluster, ClusterSpec};

/// Runs `body(t, client)` for each `t` in `0..threads` at once, each on its own thread
/// with its own client; returns what they returned, in thread order.
fn on_threads<T: Send>(
    cluster: &Cluster,
    threads: usize,
    body: impl Fn(usize, &BenchFS) -> T + Sync,
) -> Vec<T> {
    // One config for all threads: loading it in each thread at once trips the data_dir
    // write probe in ServerConfig::validate, whose name is per process, not per thread.
    let config = cluster.config();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (config, body) = (&config, &body);
                s.spawn(move || body(t, &BenchFS::connect(config).unwrap()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_clients_on_distinct_files() {
    let cluster = Cluster::start(ClusterSpec::default());
    let threads = 4;
    let file = |t: usize, round: usize| {
        let path = format!("/t{t}-{round}");
        let data = pattern(2 * C + 1234 * t + round, (t * 10 + round) as u64);
        (path, data)
    };
    on_threads(&cluster, threads, |t, fs| {
        for round in 0..3 {
            let (path, data) = file(t, round);
            write_file(fs, &path, &data);
            assert!(read_file(fs, &path) == data, "{path}");
        }
    });
    let fs = cluster.client();
    for t in 0..threads {
        for round in 0..3 {
            let (path, data) = file(t, round);
            assert!(read_file(&fs, &path) == data, "{path}");
        }
    }
}

#[test]
fn concurrent_clients_on_one_file_disjoint_ranges() {
    let cluster = Cluster::start(ClusterSpec::default());
    let threads = 4;
    // Ranges that do not line up with chunks, so neighbours share a chunk.
    let range = C + 333;
    on_threads(&cluster, threads, |t, fs| {
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

/// Clients opening one new file with O_CREAT at the same moment, each writing its own
/// small block (rank `t` at `t * block`), as MPI ranks do: one makes the file inline while
/// the others write into its record or move it to chunks. With two replicas, a write into
/// the record reached the second replica before the creator's copy had, and failed with
/// ENOENT (its block then read as zeros).
#[test]
fn small_blocks_written_by_clients_that_create_one_file_at_once_all_land() {
    let cluster = Cluster::start(ClusterSpec {
        replicas: 2,
        ..ClusterSpec::default()
    });
    let (threads, files) = (4, 32);
    let block_of =
        |block: usize, i: usize, t: usize| pattern(block, (block * 100 + i * 10 + t) as u64);
    let mut failures = Vec::new();
    // 1000-byte blocks all fit the inline limit; 3901-byte ones move the file to chunks.
    for block in [1000, 3901] {
        let barrier = Barrier::new(threads);
        let errors = on_threads(&cluster, threads, |t, fs| {
            let mut errors = Vec::new();
            for i in 0..files {
                let path = format!("/b{block}-{i}");
                barrier.wait();
                let written = fs
                    .open(&path, OpenFlags::CREATE | OpenFlags::WRITE, 0o644)
                    .and_then(|fd| {
                        fs.pwrite(fd, &block_of(block, i, t), (t * block) as u64)?;
                        fs.close(fd)
                    });
                if let Err(e) = written {
                    errors.push(format!("{path}, client {t}: {e}"));
                }
            }
            errors
        });
        failures.extend(errors.into_iter().flatten());
        let fs = cluster.client();
        for i in 0..files {
            let path = format!("/b{block}-{i}");
            let got = read_file(&fs, &path);
            for t in 0..threads {
                if got.get(t * block..(t + 1) * block) != Some(&block_of(block, i, t)[..]) {
                    failures.push(format!("{path}: block {t} differs ({} bytes)", got.len()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn exclusive_create_race_has_one_winner() {
    let cluster = Cluster::start(ClusterSpec::default());
    let threads = 4;
    let files = 20;
    let wins: Vec<Vec<bool>> = on_threads(&cluster, threads, |_, fs| {
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
    });
    for i in 0..files {
        let winners = wins.iter().filter(|w| w[i]).count();
        assert_eq!(winners, 1, "/x{i} was created {winners} times");
    }
    assert_eq!(cluster.client().readdir("/").unwrap().len(), files);
}

#[test]
fn appends_from_clients_at_once_all_land() {
    // Found by a hostile-user run: two clients appending to one file at once wrote over
    // each other's records (each append went to the end its client knew), every write
    // acknowledged. Two replicas, so both claim on both records in either order; small
    // chunks, so appends cross chunk ends; the file starts inline, so the first appends
    // move its bytes to chunks while the other client appends.
    let cluster = Cluster::start(ClusterSpec {
        servers: 3,
        replicas: 2,
        chunk_size: 16 << 10,
        rdma_threshold: 8 << 10,
        ..ClusterSpec::default()
    });
    let fs = cluster.client();
    let fd = fs
        .open("/log", OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
        .unwrap();
    fs.write(fd, b"start\n").unwrap();
    fs.close(fd).unwrap();
    assert!(fs.stat("/log").unwrap().inline, "/log starts inline");
    let record = |t: usize, i: usize| format!("{t}:{i:04}:{:>90}\n", "");
    on_threads(&cluster, 2, |t, fs| {
        let fd = fs
            .open("/log", OpenFlags::WRITE | OpenFlags::APPEND, 0)
            .unwrap();
        for i in 0..200 {
            fs.write(fd, record(t, i).as_bytes()).unwrap();
        }
        fs.close(fd).unwrap();
    });
    let got = read_file(&cluster.client(), "/log");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("start\n"),
        "the first bytes were overwritten"
    );
    let lines: Vec<&str> = got.lines().skip(1).collect();
    let want: Vec<String> = (0..2)
        .flat_map(|t| (0..200).map(move |i| record(t, i)))
        .collect();
    assert_holds_each_record_once(&lines, &want);
}

#[test]
fn an_open_file_follows_renames_another_client_makes() {
    // Found by a hostile run: a file (or a directory above it) renamed by another client
    // while open for writing failed the writer's close ("size update /x: node2@...: no
    // such file"), and the file read back empty, its bytes lost.
    let cluster = Cluster::start(ClusterSpec {
        servers: 3,
        chunk_size: 16 << 10,
        rdma_threshold: 8 << 10,
        ..ClusterSpec::default()
    });
    let (writer, renamer) = (cluster.client(), cluster.client());
    writer.mkdir("/p", 0o755).unwrap();
    let data = pattern(100_000, 4);
    let (first, second) = data.split_at(60_000);

    let fd = writer
        .open("/p/f", OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
        .unwrap();
    writer.write(fd, first).unwrap();
    renamer.rename("/p/f", "/p/g").unwrap();
    writer.write(fd, second).unwrap();
    writer
        .fsync(fd)
        .expect("fsync after another client renamed the file");
    renamer.rename("/p", "/q").unwrap();
    writer.write(fd, b"tail").unwrap();
    writer
        .close(fd)
        .expect("close after another client renamed the directory");
    let want = [&data[..], b"tail"].concat();
    assert!(read_file(&renamer, "/q/g") == want, "/q/g holds every byte");

    // Appends too: the claim of the range goes to the record's new name.
    let fd = writer.open("/q/g", OpenFlags::APPEND, 0).unwrap();
    writer.write(fd, b"+one").unwrap();
    renamer.rename("/q/g", "/h").unwrap();
    writer.write(fd, b"+two").unwrap();
    writer.close(fd).unwrap();
    let want = [&want[..], b"+one+two"].concat();
    assert!(read_file(&renamer, "/h") == want, "/h holds both appends");
}

/// Creates each of `names` (4 bytes, "data") from a client of its own while, 30 ms in,
/// another client renames directory `from` to `to`; returns the names whose create,
/// write and close all succeeded.
fn create_while_renamed(
    config: &ServerConfig,
    names: impl Iterator<Item = String> + Send,
    (from, to): (&str, &str),
) -> Vec<String> {
    std::thread::scope(|s| {
        let creator = s.spawn(|| {
            let fs = BenchFS::connect(config).unwrap();
            names
                .filter(|name| {
                    fs.open(name, OpenFlags::WRITE | OpenFlags::CREATE, 0o644)
                        .and_then(|fd| fs.write(fd, b"data").and_then(|_| fs.close(fd)))
                        .is_ok()
                })
                .collect()
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        let renamer = BenchFS::connect(config).unwrap();
        renamer.rename(from, to).unwrap();
        creator.join().unwrap()
    })
}

#[test]
fn files_created_while_their_directory_is_renamed_are_kept_or_refused() {
    // Found by a hostile run: files created in a directory while another client renamed
    // it were lost (create, write and close all succeeded): the rename moved the records
    // it had listed, and the creates of a client that still saw the directory (cached)
    // left records under a name nothing showed.
    let cluster = Cluster::start(ClusterSpec {
        servers: 3,
        ..ClusterSpec::default()
    });
    let config = cluster.config();
    let setup = cluster.client();
    setup.mkdir("/R", 0o755).unwrap();
    for i in 0..200 {
        write_file(&setup, &format!("/R/old{i}"), b"old");
    }
    let names = (0..400).map(|i| format!("/R/new{i}"));
    let kept = create_while_renamed(&config, names, ("/R", "/R2"));
    let fs = cluster.client();
    for name in &kept {
        let name = name.replacen("/R/", "/R2/", 1);
        let got = fs.stat(&name).map(|m| m.size);
        assert_eq!(got.ok(), Some(4), "{name}: created with success, then lost");
        assert_eq!(read_file(&fs, &name), b"data", "{name}");
    }
    for i in 0..200 {
        assert_eq!(read_file(&fs, &format!("/R2/old{i}")), b"old");
    }
    assert!(fs.stat("/R").is_err(), "/R is gone");
    // Nothing is left below the old name, and a directory made there again takes files.
    setup.mkdir("/R", 0o755).unwrap();
    assert_eq!(fs.readdir("/R").unwrap().len(), 0, "no leftovers under /R");
    write_file(&setup, "/R/again", b"again");
    assert_eq!(read_file(&fs, "/R/again"), b"again");
}

#[test]
fn files_created_below_a_subdirectory_while_an_ancestor_is_renamed_are_kept_or_refused() {
    // Found by a hostile run: creates two levels below a directory being renamed were
    // lost (5-25% of them, every call reporting success). The rename looked for what was
    // made below the old name meanwhile by listing it, and the old name's subdirectories
    // were no longer there to list: their records had moved.
    let cluster = Cluster::start(ClusterSpec {
        servers: 3,
        ..ClusterSpec::default()
    });
    let config = cluster.config();
    let setup = cluster.client();
    setup.mkdir("/S", 0o755).unwrap();
    setup.mkdir("/S/sub", 0o755).unwrap();
    setup.mkdir("/S/sub/deep", 0o755).unwrap();
    for i in 0..100 {
        write_file(&setup, &format!("/S/sub/old{i}"), b"old");
    }
    let names = (0..600).map(|i| match i % 2 {
        0 => format!("/S/sub/new{i}"),
        _ => format!("/S/sub/deep/new{i}"),
    });
    let kept = create_while_renamed(&config, names, ("/S", "/S2"));
    assert!(!kept.is_empty(), "no create went through");
    let fs = cluster.client();
    let lost: Vec<&String> = kept
        .iter()
        .filter(|name| {
            let moved = name.replacen("/S/", "/S2/", 1);
            fs.stat(&moved).map(|m| m.size).ok() != Some(4) || read_file(&fs, &moved) != b"data"
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} files created with success are not under the new name: {:?}",
        lost.len(),
        kept.len(),
        &lost[..lost.len().min(5)]
    );
    for i in 0..100 {
        assert_eq!(read_file(&fs, &format!("/S2/sub/old{i}")), b"old");
    }
    // Nothing is left below the old name.
    setup.mkdir("/S", 0o755).unwrap();
    setup.mkdir("/S/sub", 0o755).unwrap();
    assert_eq!(
        fs.readdir("/S/sub").unwrap().len(),
        0,
        "no leftovers under /S/sub"
    );
}

/// What `fd` reads from `offset` to the end, in reads of 64 KiB.
fn read_rest(fs: &BenchFS, fd: benchfs::blocking::Fd, mut offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = fs.pread(fd, &mut buf, offset).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        offset += n as u64;
    }
}

#[test]
fn a_handle_opened_before_another_client_wrote_reads_what_it_published() {
    // Regression (hostile run): a handle kept the size it opened with for good, so its
    // reads stopped there (and fstat said so) while stat and a new open saw the bytes
    // another client had closed or synced: `tail -f`, a rank reading after a barrier.
    let cluster = Cluster::start(ClusterSpec::default());
    let (reader, writer) = (cluster.client(), cluster.client());
    let read = OpenFlags::READ;
    let rdwr = OpenFlags::READ | OpenFlags::WRITE;
    // Chunks, inline, and inline grown past the record into chunks.
    for (name, first, more) in [
        ("/chunks", 10_000, 300_000),
        ("/inline", 5, 10),
        ("/moves", 5, 200_000),
    ] {
        let data = pattern(first + more, 7);
        write_file(&writer, name, &data[..first]);
        let fd = reader.open(name, read, 0).unwrap();
        assert_eq!(read_rest(&reader, fd, 0), &data[..first], "{name}");
        let w = writer.open(name, rdwr, 0).unwrap();
        writer.pwrite(w, &data[first..], first as u64).unwrap();
        writer.close(w).unwrap();
        if name == "/chunks" {
            // A read past the end asks again once the handle looked a second ago, as NFS
            // revalidates after its attribute timeout.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        } else {
            assert_eq!(reader.fstat(fd).unwrap().size, data.len() as u64, "{name}");
        }
        assert!(
            read_rest(&reader, fd, 0) == data,
            "{name}: the bytes written since"
        );
        assert_eq!(reader.fstat(fd).unwrap().size, data.len() as u64, "{name}");
        reader.close(fd).unwrap();
    }
    // MPI-IO's sync-barrier-sync, with the writer's handle still open: its fsync, then
    // the reader's, and the reader reads everything. One client's two handles too.
    for (name, other) in [("/synced", &writer), ("/same-client", &reader)] {
        let data = pattern(150_000, 3);
        let w = other.create(name, 0o644).unwrap();
        let fd = reader.open(name, read, 0).unwrap();
        other.pwrite(w, &data, 0).unwrap();
        other.fsync(w).unwrap();
        reader.fsync(fd).unwrap();
        assert!(read_rest(&reader, fd, 0) == data, "{name}");
        other.close(w).unwrap();
        reader.close(fd).unwrap();
    }
}

#[test]
fn a_look_at_the_record_that_spans_the_clients_own_truncate_keeps_the_cut() {
    // Review finding: fstat asks the metadata owner for what other clients published; a
    // reply read before this client's ftruncate of the same file and taken after it gave
    // the handle back the size (and an inline file's bytes) the truncate had cut.
    use futures_util::FutureExt;
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let client = fs.client();
    for (name, len, cut) in [("/inline", 100, 10), ("/chunks", 300_000, 1_000)] {
        let data = pattern(len, 5);
        // An O_CREAT open without O_TRUNC keeps a small file's bytes in its record.
        let made = fs.open(name, OpenFlags::CREATE | OpenFlags::WRITE, 0o644);
        let made = made.unwrap();
        fs.pwrite(made, &data, 0).unwrap();
        fs.close(made).unwrap();
        assert_eq!(fs.stat(name).unwrap().inline, name == "/inline");
        let fd = fs
            .open(name, OpenFlags::READ | OpenFlags::WRITE, 0)
            .unwrap();
        let seen = fs.block_on(async {
            let mut look = std::pin::pin!(client.fstat(fd));
            assert!(
                look.as_mut().now_or_never().is_none(),
                "{name}: fstat waits for the owner's reply"
            );
            client.ftruncate(fd, cut as u64).await.unwrap();
            look.await.unwrap().size
        });
        assert_eq!(seen, cut as u64, "{name}: fstat after the cut");
        assert_eq!(fs.fstat(fd).unwrap().size, cut as u64, "{name}");
        assert!(
            read_rest(&fs, fd, 0) == data[..cut],
            "{name}: the handle reads what is left"
        );
        fs.close(fd).unwrap();
        assert_eq!(fs.stat(name).unwrap().size, cut as u64, "{name}");
    }
}

#[test]
fn a_look_at_the_record_that_spans_the_clients_own_inline_write_or_size_update_keeps_it() {
    // Review findings, beside the truncate case above: a look at the record read before
    // this client's write into an inline file's record, and taken after it, gave the
    // handle back the record's older bytes (another client had made it longer); and a
    // size update's reply taken after this client's truncate gave back the cut size.
    use futures_util::FutureExt;
    let cluster = Cluster::start(ClusterSpec::default());
    // Writes wait for their servers, so fsync's size update goes at its first poll.
    let mut config = cluster.config();
    config.client.write_behind_bytes = 0;
    let fs = BenchFS::connect(&config).unwrap();
    let other = cluster.client();
    let client = fs.client();
    let rdwr = OpenFlags::READ | OpenFlags::WRITE;
    // An O_CREAT open without O_TRUNC keeps a small file's bytes in its record.
    let fd = fs.open("/inline", OpenFlags::CREATE | rdwr, 0o644).unwrap();
    fs.pwrite(fd, &[b'a'; 10], 0).unwrap();
    fs.close(fd).unwrap();
    let fd = fs.open("/inline", rdwr, 0).unwrap();
    let longer = other.open("/inline", rdwr, 0).unwrap();
    other.pwrite(longer, &[b'b'; 20], 0).unwrap();
    other.close(longer).unwrap();
    assert!(
        other.stat("/inline").unwrap().inline,
        "the test's file keeps its bytes in its record"
    );
    fs.block_on(async {
        let mut look = std::pin::pin!(client.fstat(fd));
        assert!(look.as_mut().now_or_never().is_none(), "fstat waits");
        client.pwrite(fd, b"cccc", 0).await.unwrap();
        look.await.unwrap();
    });
    assert_eq!(
        read_rest(&fs, fd, 0)[..4],
        *b"cccc",
        "the handle reads its own write"
    );
    // The look that spanned the write took nothing; the next one brings the other
    // client's bytes.
    let mut want = vec![b'b'; 20];
    want[..4].copy_from_slice(b"cccc");
    assert_eq!(fs.fstat(fd).unwrap().size, 20);
    assert_eq!(read_rest(&fs, fd, 0), want);
    fs.close(fd).unwrap();
    assert_eq!(read_file(&other, "/inline"), want);

    let data = pattern(300_000, 8);
    let fd = fs.open("/sized", OpenFlags::CREATE | rdwr, 0o644).unwrap();
    fs.pwrite(fd, &data, 0).unwrap();
    let cutter = fs.open("/sized", rdwr, 0).unwrap();
    let seen = fs.block_on(async {
        let mut sync = std::pin::pin!(client.fsync(fd));
        assert!(sync.as_mut().now_or_never().is_none(), "fsync waits");
        client.ftruncate(cutter, 1_000).await.unwrap();
        sync.await.unwrap();
        client.fstat(fd).await.unwrap().size
    });
    assert_eq!(seen, 1_000, "the size after the cut");
    assert!(read_rest(&fs, fd, 0) == data[..1_000]);
    fs.close(fd).unwrap();
    fs.close(cutter).unwrap();
    assert_eq!(other.stat("/sized").unwrap().size, 1_000);
}

#[test]
fn writes_after_another_clients_cut_are_kept_and_writes_before_it_go_with_it() {
    // Found by a hostile run: a handle that knew a longer file wrote inside that length
    // after another client cut the file; its write and close succeeded, and the close
    // published no size, so the bytes were past the end: lost.
    let cluster = Cluster::start(ClusterSpec::default());
    // Writes wait for their servers, so each lands before the cut that follows it.
    let mut config = cluster.config();
    config.client.write_behind_bytes = 0;
    let writer = BenchFS::connect(&config).unwrap();
    let other = cluster.client();
    let rdwr = OpenFlags::READ | OpenFlags::WRITE;
    let old = pattern(3 * C + 1000, 7);
    // Offsets in the first chunk, in a later one, at the end of a cut chunk, and past the
    // old end.
    let past_end = old.len() as u64 + 10;
    for (i, at) in [200, 2 * C as u64 + 17, 99, past_end]
        .into_iter()
        .enumerate()
    {
        let name = format!("/after{i}");
        write_file(&writer, &name, &old);
        let fd = writer.open(&name, rdwr, 0).unwrap();
        other.truncate(&name, 100).unwrap();
        writer.pwrite(fd, b"ZZZZ", at).unwrap();
        writer.close(fd).unwrap();
        let mut want = old[..100].to_vec();
        want.resize(at as usize, 0);
        want.splice(at as usize..(at as usize + 4).min(want.len()), []);
        want.extend_from_slice(b"ZZZZ");
        assert_eq!(other.stat(&name).unwrap().size, at + 4, "{name}");
        assert!(read_file(&other, &name) == want, "{name}: the bytes");
    }
    // The same writes made before the cut went with it, as on a local file system: the
    // close does not grow the file back over the cut range, nor to the end of writes past
    // the old end (the record's cut count moved since the handle looked).
    for (i, at) in [200, 2 * C as u64 + 17, past_end, 4 * C as u64 + 5]
        .into_iter()
        .enumerate()
    {
        let name = format!("/before{i}");
        write_file(&writer, &name, &old);
        let fd = writer.open(&name, rdwr, 0).unwrap();
        writer.pwrite(fd, b"ZZZZ", at).unwrap();
        other.truncate(&name, 100).unwrap();
        writer.close(fd).unwrap();
        assert_eq!(other.stat(&name).unwrap().size, 100, "{name}");
        assert!(read_file(&other, &name) == old[..100], "{name}: the bytes");
    }
    // A truncate that grows the file cuts what lay past its new end: a write there made
    // before it goes too, and the close does not grow the file to its end.
    let name = "/grown-over";
    write_file(&writer, name, &old);
    let fd = writer.open(name, rdwr, 0).unwrap();
    writer.pwrite(fd, b"ZZZZ", 4 * C as u64).unwrap();
    let grown = old.len() + 100;
    other.truncate(name, grown as u64).unwrap();
    writer.close(fd).unwrap();
    assert_eq!(other.stat(name).unwrap().size, grown as u64, "{name}");
    let mut want = old.clone();
    want.resize(grown, 0);
    assert!(read_file(&other, name) == want, "{name}: the bytes");
    // An append's claim orders it before a cut its close finds, whatever bytes lie at its
    // end by then (here a third client's, not yet published): the file is not grown back.
    let name = "/appended";
    write_file(&writer, name, &old);
    let fd = writer
        .open(name, OpenFlags::WRITE | OpenFlags::APPEND, 0)
        .unwrap();
    writer.write(fd, b"ZZZZ").unwrap();
    other.truncate(name, 100).unwrap();
    let third = BenchFS::connect(&config).unwrap();
    let held = third.open(name, OpenFlags::WRITE, 0).unwrap();
    third.pwrite(held, b"!", old.len() as u64 + 3).unwrap();
    writer.close(fd).unwrap();
    assert_eq!(other.stat(name).unwrap().size, 100, "{name}");
    third.close(held).unwrap();
}

/// A truncate to 0 racing another client's close of a file it just wrote (helper-91):
/// the truncate sets the size, then cuts the chunks; a close between the two found its
/// bytes still held, took them for bytes written after the cut and grew the file back,
/// after which the cut removed them. The file kept its size and read as zeros for good.
/// Either order is fine (empty, or the writer's bytes); zeros nobody wrote are not.
#[test]
fn a_close_racing_a_truncate_never_leaves_zeros() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 3,
        ..ClusterSpec::default()
    });
    let (config, cutter) = (cluster.config(), cluster.client());
    let rounds = 300;
    let data = vec![b'A'; 10_000];
    // Delays of up to 400 µs, from a fixed sequence, so the two calls meet at every
    // point of each other.
    let delay = |i: usize, salt: usize| {
        std::time::Duration::from_micros(((i * 7919 + salt * 104_729) % 400) as u64)
    };
    let barrier = Barrier::new(2);
    let mut zeros = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let writer = BenchFS::connect(&config).unwrap();
            for i in 0..rounds {
                let path = format!("/tc{}", i % 16);
                let flags = OpenFlags::CREATE | OpenFlags::TRUNC | OpenFlags::WRITE;
                let fd = writer.open(&path, flags, 0o644).unwrap();
                writer.pwrite(fd, &data, 0).unwrap();
                barrier.wait();
                std::thread::sleep(delay(i, 1));
                writer.close(fd).unwrap();
                barrier.wait();
            }
        });
        for i in 0..rounds {
            let path = format!("/tc{}", i % 16);
            barrier.wait();
            std::thread::sleep(delay(i, 2));
            cutter.truncate(&path, 0).unwrap();
            barrier.wait();
            let got = read_file(&cutter, &path);
            if !got.is_empty() && got != data {
                zeros.push(format!(
                    "round {i}: {path} holds {} bytes, not 'A's",
                    got.len()
                ));
            }
        }
    });
    assert!(zeros.is_empty(), "{zeros:#?}");
}

#[test]
fn a_handle_open_before_another_clients_cut_reads_to_the_cut_not_zeros() {
    // Found by a hostile run: a handle that knew the longer file read zeros from the cut
    // to the old end, bytes the file no longer held, and fstat gave the old size.
    let cluster = Cluster::start(ClusterSpec::default());
    let (reader, other) = (cluster.client(), cluster.client());
    let old = pattern(3 * C + 1000, 9);
    for (name, cut) in [("/cut-in-chunk", 100), ("/cut-at-chunk", C)] {
        write_file(&other, name, &old);
        let fd = reader.open(name, OpenFlags::READ, 0).unwrap();
        other.truncate(name, cut as u64).unwrap();
        let mut buf = vec![0xffu8; old.len()];
        let n = reader.pread(fd, &mut buf, 0).unwrap();
        assert_eq!(n, cut, "{name}: the read ends at the cut");
        assert!(buf[..n] == old[..cut], "{name}: the bytes");
        assert_eq!(reader.fstat(fd).unwrap().size, cut as u64, "{name}");
        assert_eq!(reader.pread(fd, &mut buf, cut as u64).unwrap(), 0, "{name}");
        reader.close(fd).unwrap();
    }
    // A hole stays a hole: zeros up to the size, which no cut moved.
    let fd = other
        .open("/sparse", OpenFlags::CREATE | OpenFlags::WRITE, 0o644)
        .unwrap();
    other.pwrite(fd, b"end", 2 * C as u64).unwrap();
    other.close(fd).unwrap();
    let fd = reader.open("/sparse", OpenFlags::READ, 0).unwrap();
    let mut buf = vec![0xffu8; 3 * C];
    assert_eq!(reader.pread(fd, &mut buf, 0).unwrap(), 2 * C + 3);
    assert!(buf[..2 * C].iter().all(|&b| b == 0) && &buf[2 * C..2 * C + 3] == b"end");
    reader.close(fd).unwrap();
}

#[test]
fn appends_after_another_clients_cuts_land_whole_at_the_new_end() {
    // A cut moves the record's cut count, and chunk servers drop an append's bytes past a
    // cut its claim came before. An append made after the cut, through a handle or a
    // record read before it, carries its own claim's count and must land whole.
    let cluster = Cluster::start(ClusterSpec::default());
    let writer = cluster.client();
    let other = cluster.client();
    let name = "/log";
    write_file(&writer, name, &pattern(2 * C, 3));
    let before = writer.stat(name).unwrap();
    let fd = writer
        .open(name, OpenFlags::WRITE | OpenFlags::APPEND, 0)
        .unwrap();
    // Across a chunk's end, so that more than one server takes the bytes.
    let long = pattern(C + 100, 4);
    let mut want = Vec::new();
    for (cut, bytes) in [(0, &b"first"[..]), (3, &long[..]), (C as u64 + 50, b"end")] {
        other.truncate(name, cut).unwrap();
        want.truncate(cut as usize);
        writer.write(fd, bytes).unwrap();
        want.extend_from_slice(bytes);
        writer.fsync(fd).unwrap();
        assert!(
            read_file(&other, name) == want,
            "appended after a cut to {cut}"
        );
    }
    writer.close(fd).unwrap();
    // With no handle, from the record as it was before every cut (as a mount appends).
    other.truncate(name, 7).unwrap();
    want.truncate(7);
    let at = writer.append_at(name, before, b"unhandled", 0).unwrap();
    assert_eq!(at, 7);
    want.extend_from_slice(b"unhandled");
    assert_eq!(other.stat(name).unwrap().size, want.len() as u64);
    assert!(read_file(&other, name) == want, "appended with no handle");
}

#[test]
fn files_written_while_their_directory_is_renamed_keep_their_bytes() {
    // Found by a hostile run: a file created and written while another client renamed its
    // directory came out empty under the new name, though its write and close succeeded:
    // its close published the size at the old name after the rename had copied that
    // record, and the rename then dropped it. The writer makes files until a create fails
    // (the old name is gone), then goes on in the new name; every file it was told it
    // wrote must hold its bytes.
    let cluster = Cluster::start(ClusterSpec::default());
    let names = ["/ren-a", "/ren-b"];
    let renamer = cluster.client();
    renamer.mkdir(names[0], 0o755).unwrap();
    let rounds = 6;
    let written = std::sync::Mutex::new(Vec::new());
    let renamed = std::sync::atomic::AtomicUsize::new(0);
    let config = cluster.config();
    std::thread::scope(|s| {
        s.spawn(|| {
            let fs = BenchFS::connect(&config).unwrap();
            let mut i = 0u64;
            // Both sizes: an inline file's bytes live in its record, a larger one's in chunks.
            while renamed.load(std::sync::atomic::Ordering::SeqCst) < rounds {
                let dir = names[renamed.load(std::sync::atomic::Ordering::SeqCst) % 2];
                let name = format!("f{i}");
                let data = pattern(if i.is_multiple_of(2) { 100 } else { 70_000 }, i);
                let fd = match fs.open(
                    &format!("{dir}/{name}"),
                    OpenFlags::WRITE | OpenFlags::CREATE,
                    0o644,
                ) {
                    Ok(fd) => fd,
                    Err(_) => continue,
                };
                let wrote = fs.write(fd, &data).is_ok();
                if fs.close(fd).is_ok() && wrote {
                    written.lock().unwrap().push((name, data));
                }
                i += 1;
            }
        });
        for round in 0..rounds {
            std::thread::sleep(std::time::Duration::from_millis(30));
            renamer
                .rename(names[round % 2], names[(round + 1) % 2])
                .unwrap();
            renamed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let dir = names[rounds % 2];
    let written = written.into_inner().unwrap();
    assert!(written.len() > 10, "only {} files written", written.len());
    for (name, data) in &written {
        let path = format!("{dir}/{name}");
        let held = read_file(&renamer, &path);
        assert!(
            held == *data,
            "{path}: {} bytes read, {} written",
            held.len(),
            data.len()
        );
    }
}

#[test]
fn a_truncate_past_the_size_it_read_keeps_the_appends_claimed_meanwhile() {
    // Regression: a truncate reads the file's size, then sets the new one. An append
    // claimed in between grows the record past both, and a truncate to a size between the
    // two cut at the size it had read: the appended bytes below the new size read as zeros.
    const ROUNDS: usize = 150;
    let cluster = Cluster::start(ClusterSpec::default());
    let (base, target) = (C + 100, C + 150);
    let appended = vec![b'a'; 1000];
    let config = cluster.config();
    // Every thread meets at both barriers in every round, failed calls included, so that
    // a failure ends the test instead of leaving the others waiting.
    let (start, done) = (Barrier::new(3), Barrier::new(3));
    let checker = cluster.client();
    let mut failures = Vec::new();
    let mut appends_first = 0;
    let name = |round: usize| format!("/grown-{round}");
    let calls = std::thread::scope(|s| {
        let appender = s.spawn(|| {
            let fs = BenchFS::connect(&config).unwrap();
            let mut failed = Vec::new();
            for round in 0..ROUNDS {
                start.wait();
                let appended = fs.open(&name(round), OpenFlags::APPEND, 0).and_then(|fd| {
                    fs.write(fd, &appended)?;
                    fs.close(fd)
                });
                failed.extend(appended.err().map(|e| format!("append: {e}")));
                done.wait();
            }
            failed
        });
        let truncater = s.spawn(|| {
            let fs = BenchFS::connect(&config).unwrap();
            let mut failed = Vec::new();
            for round in 0..ROUNDS {
                start.wait();
                let cut = fs.truncate(&name(round), target as u64);
                failed.extend(cut.err().map(|e| format!("truncate: {e}")));
                done.wait();
            }
            failed
        });
        for round in 0..ROUNDS {
            let (name, before) = (name(round), pattern(base, round as u64));
            write_file(&checker, &name, &before);
            start.wait();
            done.wait();
            let got = read_file(&checker, &name);
            let gap = &got[base.min(got.len())..target.min(got.len())];
            let kept = got.len() == target && gap.iter().all(|&b| b == b'a');
            // The truncate came first: zeros up to it, the append after.
            let grown = got.len() == target + appended.len()
                && gap.iter().all(|&b| b == 0)
                && got[target..] == appended[..];
            appends_first += usize::from(kept);
            if got[..base.min(got.len())] != before[..base.min(got.len())] || !(kept || grown) {
                failures.push(format!(
                    "{name}: {} bytes, the first not appended below the new size at {:?}",
                    got.len(),
                    gap.iter().position(|&b| b != b'a').map(|i| base + i)
                ));
            }
        }
        [appender.join().unwrap(), truncater.join().unwrap()].concat()
    });
    assert_eq!(calls, Vec::<String>::new(), "calls failed");
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} files lost appended bytes: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    common::note(&format!(
        "{appends_first} of {ROUNDS} rounds appended before the truncate set the size"
    ));
}

#[test]
fn clients_creating_one_name_to_append_all_open_it_and_every_append_lands() {
    // Found by a hostile-user run: with two replicas, clients opening a new name with
    // O_CREAT|O_APPEND at once met the record on its first replica before its creator had
    // copied it to the second. An append's claim then failed there with ENOENT after the
    // first replica had taken it (zeros the size of the append in the file), or a client
    // copied the record over first and the creator, finding it there, removed the file.
    const ROUNDS: usize = 40;
    const CLIENTS: usize = 3;
    const LEN: usize = 20_000;
    let cluster = Cluster::start(ClusterSpec {
        servers: 4,
        replicas: 2,
        ..ClusterSpec::default()
    });
    let config = cluster.config();
    // Every thread meets the barrier in every round, failed calls included.
    let start = Barrier::new(CLIENTS);
    let name = |round: usize| format!("/created-{round}");
    let block = |t: usize| vec![b'a' + t as u8; LEN];
    let failed: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (config, start) = (&config, &start);
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for round in 0..ROUNDS {
                        // A client of its own each round: one that has not met the
                        // servers yet, as a new process is.
                        let fs = BenchFS::connect(config).unwrap();
                        start.wait();
                        let flags = OpenFlags::CREATE | OpenFlags::WRITE | OpenFlags::APPEND;
                        let appended = fs.open(&name(round), flags, 0o644).and_then(|fd| {
                            fs.write(fd, &block(t))?;
                            fs.close(fd)
                        });
                        failed.extend(appended.err().map(|e| format!("round {round}: {e}")));
                    }
                    failed
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(failed, Vec::<String>::new(), "opens or appends failed");
    let fs = cluster.client();
    let mut wrong = Vec::new();
    for round in 0..ROUNDS {
        let got = read_file(&fs, &name(round));
        let mut blocks: Vec<&[u8]> = got.chunks(LEN).collect();
        blocks.sort();
        let want: Vec<Vec<u8>> = (0..CLIENTS).map(block).collect();
        if got.len() != CLIENTS * LEN || blocks != want {
            wrong.push(format!("{}: {} bytes", name(round), got.len()));
        }
    }
    assert!(
        wrong.is_empty(),
        "files without each append once, whole: {wrong:?}"
    );
}

/// A write made after another client's truncate is the file's, even when an earlier
/// write of the same handle reached further (and went with the cut): helper-92 saw the
/// close keep only the handle's furthest write, find it cut, and publish size 0; the
/// later write's bytes then stayed in the chunk past the size and came back as the
/// file's when it grew again. The writer writes through: its first write has landed
/// before the cut (one behind may land after it, in part; `write_behind.rs` races those).
#[test]
fn a_write_after_another_clients_cut_is_kept_below_the_handles_furthest_write() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 3,
        ..ClusterSpec::default()
    });
    let mut config = cluster.config();
    config.client.write_behind_bytes = 0;
    let (writer, cutter) = (BenchFS::connect(&config).unwrap(), cluster.client());
    for (round, at) in [150_000u64, 10].into_iter().enumerate() {
        let path = format!("/tc{round}");
        let flags = OpenFlags::CREATE | OpenFlags::WRITE;
        let fd = writer.open(&path, flags, 0o644).unwrap();
        writer.pwrite(fd, &pattern(200_000, 3), 0).unwrap();
        cutter.truncate(&path, 0).unwrap();
        writer.pwrite(fd, &[b'a'; 1000], at).unwrap();
        writer.close(fd).unwrap();
        let mut want = vec![0u8; at as usize];
        want.extend_from_slice(&[b'a'; 1000]);
        let got = read_file(&cutter, &path);
        assert_eq!(
            got.len(),
            want.len(),
            "{path}: the size reaches the later write"
        );
        assert!(
            got == want,
            "{path}: zeros up to the later write, then its bytes"
        );
        // Grown past it by another client: what lies between reads as zeros.
        let fd = cutter.open(&path, OpenFlags::WRITE, 0).unwrap();
        cutter.pwrite(fd, b"Z", 5000.max(at + 2000)).unwrap();
        cutter.close(fd).unwrap();
        let grown = read_file(&writer, &path);
        want.resize(5000.max(at as usize + 2000), 0);
        want.push(b'Z');
        assert!(grown == want, "{path}: no bytes of the cut write come back");
    }
}
