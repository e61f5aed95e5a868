//! The `benchfs` command line against real servers: put and get never damage the file they
//! would replace, the benchmark removes only what it created, `cluster up` keeps an earlier
//! cluster's data, awkward directory names, replica counts, job secrets, and local errors
//! that name the local file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use benchfs::placement::PlacementKey;
use common::cli::{benchfs, run_benchfs, snapshot, ClusterDir};
use common::disk::SmallDisk;
use common::files::{read_file, stats, write_file, write_in_place, IN_PLACE};
use common::{pattern, Cluster, ClusterSpec};

/// A path as a command-line argument (test paths are UTF-8).
fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `benchfs args --dir <the fixture cluster's directory>`.
fn on(cluster: &Cluster, args: &[&str]) -> common::cli::Run {
    let mut all = args.to_vec();
    all.extend(["--dir", arg(cluster.dir.path())]);
    benchfs(&all, &[])
}

/// Waits until no server holds data directory `dir`'s lock. A killed server's main thread
/// turns zombie while its other threads, which hold its descriptors, may still be exiting
/// (waiting for the zombie made `cluster up --resume` find the directory in use).
fn wait_until_unlocked(dir: &Path) {
    let lock = std::fs::File::open(dir.join(".benchfsd.lock")).unwrap();
    while lock.try_lock().is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    lock.unlock().unwrap();
}

/// Kills (SIGKILL) the cluster's server `node`, process `pid`, and waits until its data
/// directory is free for a server started again.
fn kill_node(c: &ClusterDir, node: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until_unlocked(&c.dir.join("data").join(node));
}

/// The names in a BenchFS directory, sorted.
fn names(fs: &benchfs::blocking::BenchFS, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs
        .readdir(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

/// The names in a local directory, sorted.
fn local_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn put_of_an_unreadable_source_leaves_the_remote_file_alone() {
    // Regression: a put whose local source was a directory truncated the remote file, then
    // failed to read the source, leaving the remote file empty.
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..Default::default()
    });
    let fs = cluster.client();
    let data = pattern(200_000, 1);
    write_file(&fs, "/f", &data);
    let local = tempfile::tempdir_in(common::test_root()).unwrap();
    let missing = local.path().join("missing.bin");
    for source in [local.path(), missing.as_path()] {
        let stderr = on(&cluster, &["put", arg(source), "/f"]).failed();
        let fresh = cluster.client();
        assert_eq!(
            fresh.stat("/f").unwrap().size,
            data.len() as u64,
            "{stderr}"
        );
        assert!(read_file(&fresh, "/f") == data, "put {source:?}");
        assert!(
            stderr.contains(arg(source)) && stderr.contains("/f"),
            "the error names the local and the remote path: {stderr}"
        );
    }
}

#[test]
fn put_and_get_into_a_directory_use_the_files_own_name() {
    // Regression: `put file /dir` failed with EISDIR, where cp (and get) copy into the
    // directory under the file's own name.
    let cluster = Cluster::start(ClusterSpec::default());
    let local = tempfile::tempdir_in(common::test_root()).unwrap();
    let source = local.path().join("data.bin");
    let data = pattern(70_000, 3);
    std::fs::write(&source, &data).unwrap();
    on(&cluster, &["mkdir", "/d"]).ok();
    on(&cluster, &["put", arg(&source), "/d"]).ok();
    on(&cluster, &["put", arg(&source), "/d/"]).ok();
    let fs = cluster.client();
    assert_eq!(names(&fs, "/d"), ["data.bin"]);
    assert!(read_file(&fs, "/d/data.bin") == data);
    // Standard input has no name to take: a clear error, and nothing made.
    let stderr = on(&cluster, &["put", "-", "/d"]).failed();
    assert!(stderr.contains("/d is a directory"), "{stderr}");
    assert_eq!(names(&fs, "/d"), ["data.bin"]);

    // A trailing '/' names a directory that must be there (it said EISDIR of a path
    // that does not exist).
    let stderr = on(&cluster, &["put", arg(&source), "/nodir/"]).failed();
    assert!(stderr.contains("no such file or directory"), "{stderr}");
    let stderr = on(&cluster, &["put", arg(&source), "/d/data.bin/"]).failed();
    assert!(stderr.contains("not a directory"), "{stderr}");
    assert_eq!(names(&fs, "/"), ["d"]);

    let back = local.path().join("back");
    std::fs::create_dir(&back).unwrap();
    on(&cluster, &["get", "/d/data.bin", arg(&back)]).ok();
    assert!(std::fs::read(back.join("data.bin")).unwrap() == data);
    // `-` is standard output, as `put -` reads standard input (it wrote a file named `-`).
    let text = local.path().join("text");
    std::fs::write(&text, "some text\n").unwrap();
    on(&cluster, &["put", arg(&text), "/d"]).ok();
    let out = on(&cluster, &["get", "/d/text", "-"]);
    assert!(!Path::new("-").exists(), "get wrote a file named -");
    assert_eq!(out.ok(), "some text\n");
    // The source a directory: said of the source, not of the destination.
    let stderr = on(&cluster, &["get", "/d/", arg(&back)]).failed();
    assert!(stderr.contains("/d/ is a directory"), "{stderr}");
    assert_eq!(local_names(&back), ["data.bin"]);
}

#[test]
fn a_failed_get_leaves_no_partial_local_file() {
    // Regression: get created (truncated) its destination before reading the remote file,
    // so a get that failed left an empty or partial local file in place of the old one.
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::short_timeout()
    });
    let fs = cluster.client();
    let data = pattern(17 * 64 * 1024, 2);
    write_file(&fs, "/big", &data);
    let local = tempfile::tempdir_in(common::test_root()).unwrap();
    let old = local.path().join("old.bin");
    std::fs::write(&old, b"the previous contents").unwrap();
    let fresh = local.path().join("fresh.bin");

    on(&cluster, &["get", "/missing", arg(&old)]).failed();
    on(&cluster, &["get", "/missing", arg(&fresh)]).failed();
    assert_eq!(std::fs::read(&old).unwrap(), b"the previous contents");
    assert_eq!(local_names(local.path()), ["old.bin"]);

    // A read that fails part-way: the server that is not the file's metadata owner holds
    // some of its 17 chunks, and is gone when they are read.
    let owner = fs.client().metadata_owner("/big").unwrap();
    let other = fs
        .block_on(fs.client().server_stats())
        .into_iter()
        .find(|(entry, s)| entry.node_id != owner && s.as_ref().unwrap().chunks > 0)
        .map(|(entry, _)| entry.node_id)
        .expect("17 chunks spread over both servers");
    cluster.kill(other.trim_start_matches("node").parse().unwrap());
    let stderr = on(&cluster, &["get", "/big", arg(&old)]).failed();
    assert!(stderr.contains("/big"), "{stderr}");
    assert_eq!(std::fs::read(&old).unwrap(), b"the previous contents");
    // To standard output, the error names the command given (it said `cat`).
    let stderr = on(&cluster, &["get", "/big", "-"]).failed();
    assert!(stderr.contains("get /big -> -: "), "{stderr}");
    assert_eq!(
        local_names(local.path()),
        ["old.bin"],
        "no temporary file is left"
    );
}

#[test]
fn bench_removes_only_what_it_created() {
    // Regression: `benchfs bench --local-dir DIR` deleted DIR and everything in it, and
    // used the fixed BenchFS directory /bench, removing a user's /bench/seq. Now every
    // workload of the suite, by two client processes, beside a local baseline.
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..Default::default()
    });
    let fs = cluster.client();
    fs.mkdir("/bench", 0o755).unwrap();
    write_file(
        &fs,
        "/bench/seq",
        b"a user's file named like the benchmark's",
    );
    write_file(&fs, "/keep", b"kept");
    let local = tempfile::tempdir_in(common::test_root()).unwrap();
    std::fs::write(local.path().join("sentinel"), b"must survive").unwrap();

    let out = tempfile::tempdir_in(common::test_root()).unwrap();
    let report = on(
        &cluster,
        &[
            "bench",
            "suite",
            "--easy-block",
            "2m",
            "--hard-segments",
            "10",
            "--easy-files",
            "5",
            "--hard-files",
            "5",
            "--clients",
            "2",
            "--baseline",
            arg(local.path()),
            "--out",
            arg(out.path()),
        ],
    )
    .ok();
    assert!(report.contains("ior-easy-write"), "{report}");
    assert_eq!(
        std::fs::read(local.path().join("sentinel")).unwrap(),
        b"must survive"
    );
    assert_eq!(local_names(local.path()), ["sentinel"]);
    let fs = cluster.client();
    assert_eq!(
        read_file(&fs, "/bench/seq"),
        b"a user's file named like the benchmark's"
    );
    assert_eq!(read_file(&fs, "/keep"), b"kept");
    assert_eq!(names(&fs, "/"), ["bench", "keep"]);
    assert_eq!(names(&fs, "/bench"), ["seq"]);
    // Every chunk the benchmark wrote is gone with its file: only the two kept files' remain.
    let chunks: u64 = stats(&fs).iter().map(|s| s.chunks).sum();
    assert_eq!(chunks, 2);
}

#[test]
fn an_interrupted_benchmark_removes_what_it_wrote() {
    // Found by a hostile-user run: `bench ior` stopped by SIGINT exited at once and left
    // gigabytes in files that were never closed (so `ls` showed them empty). The signal
    // goes to rank 0 alone (`kill -INT`), which passes it on to its client processes, and
    // to the whole process group (a terminal's Ctrl-C), which must stop each rank once.
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..Default::default()
    });
    write_file(&cluster.client(), "/keep", b"kept");
    for to_group in [false, true] {
        let out = tempfile::tempdir_in(common::test_root()).unwrap();
        let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_benchfs"))
            .args(["bench", "ior", "--clients", "2", "-t", "1m", "-b", "64g"])
            .args(["--no-limits", "--dir", arg(cluster.dir.path())])
            .args(["--out", arg(out.path())])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let fs = cluster.client();
        let started = std::time::Instant::now();
        while stats(&fs).iter().map(|s| s.chunks).sum::<u64>() < 20 {
            assert!(
                started.elapsed().as_secs() < 60,
                "the benchmark wrote nothing"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let pid = Pid::from_raw(bench.id() as i32);
        let signalled = std::time::Instant::now();
        if to_group {
            killpg(pid, Signal::SIGINT).unwrap();
        } else {
            kill(pid, Signal::SIGINT).unwrap();
        }
        let status = bench.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(
            status.code(),
            Some(130),
            "to the group: {to_group}; {stderr}"
        );
        // Every rank stopped and said so: rank 0 did not wait out its 10 s bound for a
        // rank that a second signal ended before it could.
        assert!(
            signalled.elapsed() < std::time::Duration::from_secs(8),
            "to the group: {to_group}: stopped after {:?}",
            signalled.elapsed()
        );
        assert!(
            stderr.contains("interrupted") && !stderr.contains("failed"),
            "to the group: {to_group}; {stderr}"
        );
        let fs = cluster.client();
        assert_eq!(names(&fs, "/"), ["keep"], "to the group: {to_group}");
        let chunks: u64 = stats(&fs).iter().map(|s| s.chunks).sum();
        assert_eq!(
            chunks, 1,
            "to the group: {to_group}: only /keep's chunk is left"
        );
    }
}

#[test]
fn cluster_up_keeps_an_earlier_clusters_data_unless_told() {
    // Regression: `cluster up` on the directory of a stopped persistent cluster removed its
    // data directory and started an empty cluster.
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "2", "--backend", "file"]);
    let local = c.local("in.bin");
    let data = pattern(300_000, 3);
    std::fs::write(&local, &data).unwrap();
    c.cli(&["put", arg(&local), "/kept"]);
    c.cli(&["cluster", "down"]);
    let before = snapshot(&c.dir.join("data"));
    assert!(!before.is_empty());

    let stderr = c
        .run(&["cluster", "up", "--servers", "2", "--backend", "file"])
        .failed();
    assert!(
        stderr.contains("--resume") && stderr.contains("--wipe") && stderr.contains(c.dir_arg()),
        "the refusal says how to go on: {stderr}"
    );
    assert!(
        snapshot(&c.dir.join("data")) == before,
        "a refused up touches no data"
    );

    // Regression (hostile-user run): the servers resumed inherited BENCHFS_* variables
    // over the recorded settings, and another virtual-node count read the file as holes,
    // with status 0. A variable giving the recorded value is no change.
    for (var, value, changed) in [
        (
            "BENCHFS_PLACEMENT_VIRTUAL_NODES",
            "3",
            "placement.virtual_nodes",
        ),
        ("BENCHFS_STORAGE_BACKEND", "memory", "storage.backend"),
    ] {
        let stderr = c
            .run_with_env(&["cluster", "up", "--resume"], &[(var, Path::new(value))])
            .failed();
        assert!(
            stderr.contains(changed) && stderr.contains("unset those BENCHFS_* variables"),
            "{stderr}"
        );
    }
    let same = [("BENCHFS_PLACEMENT_VIRTUAL_NODES", Path::new("150"))];
    c.run_with_env(&["cluster", "up", "--resume"], &same).ok();
    let back = c.local("out.bin");
    c.cli(&["get", "/kept", arg(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
    assert!(c.cli(&["cluster", "down"]).contains("2 servers stopped"));
    // Each server's log holds both of its lives.
    let log = std::fs::read_to_string(c.dir.join("logs").join("node0.log")).unwrap();
    assert_eq!(log.matches("stopped cleanly").count(), 2, "{log}");

    c.cli(&["cluster", "up", "--servers", "1", "--wipe"]);
    assert!(!c.cli(&["ls", "/"]).contains("kept"));

    let empty = ClusterDir::new("empty");
    let stderr = empty.run(&["cluster", "up", "--resume"]).failed();
    assert!(stderr.contains("nothing to resume"), "{stderr}");
}

#[test]
fn cluster_up_resume_starts_the_servers_that_stopped() {
    // Found by a hostile-user run: with one server of a cluster killed, `cluster up
    // --resume` refused ("a cluster is already running"), leaving the user to rebuild
    // the benchfsd command line by hand.
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "3", "--backend", "file"]);
    let local = c.local("in.bin");
    let data = pattern(300_000, 4);
    std::fs::write(&local, &data).unwrap();
    c.cli(&["put", arg(&local), "/kept"]);
    let before = c.pids();
    let killed = before[1];
    kill_node(&c, "node1", killed);
    let out = c.cli(&["cluster", "up", "--resume"]);
    assert!(out.contains("1 server (2 were running)"), "{out}");
    let after = c.pids();
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(
        (after[0], after[2]),
        (before[0], before[2]),
        "the others ran on"
    );
    assert_ne!(after[1], killed);
    let back = c.local("out.bin");
    c.cli(&["get", "/kept", arg(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
    let err = c.run(&["cluster", "up", "--resume"]).failed();
    assert!(err.contains("every server"), "{err}");
    let err = c.run(&["cluster", "up", "--servers", "3"]).failed();
    assert!(
        err.contains("already running") && err.contains("--resume"),
        "{err}"
    );
    assert!(c.cli(&["cluster", "down"]).contains("3 servers stopped"));
}

#[test]
fn cluster_up_resume_starts_a_server_whose_data_directory_was_removed() {
    // Found by a hostile-user run: with a killed server's data directory removed,
    // `--resume` said every server was running and started nothing.
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "3", "--backend", "file"]);
    let before = c.pids();
    kill_node(&c, "node1", before[1]);
    let node1_data = Path::new(c.dir_arg()).join("data/node1");
    std::fs::remove_dir_all(&node1_data).unwrap();
    let out = c.cli(&["cluster", "up", "--resume"]);
    assert!(out.contains("1 server (2 were running)"), "{out}");
    assert!(node1_data.is_dir(), "node1 got no data directory");
    let status = c.cli(&["cluster", "status"]);
    assert!(!status.contains("unreachable"), "{status}");
    let local = c.local("in.bin");
    let data = pattern(300_000, 5);
    std::fs::write(&local, &data).unwrap();
    c.cli(&["put", arg(&local), "/after"]);
    let back = c.local("out.bin");
    c.cli(&["get", "/after", arg(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
    assert!(c.cli(&["cluster", "down"]).contains("3 servers stopped"));
}

#[test]
fn a_server_that_fails_to_start_names_the_others_still_running() {
    // Found by a hostile-user run: a server that exited during `cluster up --resume` made
    // it say "only 0 of 3 servers came up" while the two others ran on, unmentioned.
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "3", "--backend", "file"]);
    assert!(c.cli(&["cluster", "down"]).contains("3 servers stopped"));
    let node1_data = Path::new(c.dir_arg()).join("data/node1");
    std::fs::remove_dir_all(&node1_data).unwrap();
    std::fs::write(&node1_data, b"not a directory").unwrap();
    let out = c.run(&["cluster", "up", "--resume"]).failed();
    assert!(out.contains("node1 exited"), "{out}");
    assert!(out.contains("2 started here still run"), "{out}");
    assert!(out.contains("cluster down --dir"), "{out}");
    assert!(c.cli(&["cluster", "down"]).contains("2 servers stopped"));
}

/// The pid of the `benchfsd` serving node `node` of the cluster in `dir`, if one runs.
fn server_of(dir: &Path, node: &str) -> Option<u32> {
    let data_dir = dir.join("data").join(node);
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|item| {
        let pid: u32 = item.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(item.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        args.windows(2)
            .any(|pair| {
                pair[0] == b"--data-dir" && pair[1] == data_dir.as_os_str().as_encoded_bytes()
            })
            .then_some(pid)
    })
}

#[test]
fn a_client_of_a_cluster_still_coming_up_keeps_every_nodes_place() {
    // A new cluster's servers marked themselves members only once up: a client started
    // while one was starting (or after it failed to start) placed files on a smaller ring,
    // and once the server was up they read back as missing.
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let c = ClusterDir::new("c");
    let (up, stopped) = loop {
        let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_benchfs"))
            .args([
                "cluster",
                "up",
                "--servers",
                "3",
                "--backend",
                "file",
                "--wipe",
            ])
            .args(["--dir", c.dir_arg()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let node1 = loop {
            if let Some(pid) = server_of(&c.dir, "node1") {
                break Pid::from_raw(pid as i32);
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        };
        kill(node1, Signal::SIGSTOP).unwrap();
        if !c.dir.join("registry/node1.addr").exists() {
            break (up, node1);
        }
        // Stopped too late, after it published: again.
        kill(node1, Signal::SIGCONT).unwrap();
        assert!(up.wait().unwrap().success());
        c.cli(&["cluster", "down"]);
    };
    assert!(
        c.dir.join("registry/node1.member").exists(),
        "node1 is no member while it starts"
    );
    let others = ["node0", "node2"].map(|node| c.dir.join(format!("registry/{node}.addr")));
    while !others.iter().all(|entry| entry.exists()) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let local = c.local("in.bin");
    let data = pattern(100_000, 3);
    std::fs::write(&local, &data).unwrap();
    let mut written = Vec::new();
    for i in 0..12 {
        let path = format!("/f{i}");
        let put = c.run(&["put", arg(&local), &path]);
        match put.success {
            true => written.push(path),
            false => assert!(
                put.stderr.contains("publishes no address"),
                "{}",
                put.stderr
            ),
        }
    }
    kill(stopped, Signal::SIGCONT).unwrap();
    let up_out = up.wait_with_output().unwrap();
    assert!(
        up_out.status.success(),
        "{}",
        String::from_utf8_lossy(&up_out.stderr)
    );
    let back = c.local("out.bin");
    for path in &written {
        c.cli(&["get", path, arg(&back)]);
        assert!(std::fs::read(&back).unwrap() == data, "{path} differs");
    }
    assert!(c.cli(&["cluster", "down"]).contains("3 servers stopped"));
}

#[test]
fn cluster_up_resume_starts_only_the_clusters_own_nodes() {
    // Found by a hostile-user run: `--resume` started a server for every directory under
    // `data/` (a backup copy `node1.save`, an `extra`), which changed the ring: 5 of 6
    // files read back as missing or failed.
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "3", "--backend", "file"]);
    let local = c.local("in.bin");
    let data = pattern(9_000_000, 12);
    std::fs::write(&local, &data).unwrap();
    for i in 0..4 {
        c.cli(&["put", arg(&local), &format!("/p{i}")]);
    }
    assert!(c.cli(&["cluster", "down"]).contains("3 servers stopped"));
    let data_dir = Path::new(c.dir_arg()).join("data");
    std::fs::create_dir(data_dir.join("extra")).unwrap();
    std::fs::create_dir(data_dir.join("node1.save")).unwrap();
    // A marker an earlier such start left: it would hold a place on every client's ring.
    let stray = Path::new(c.dir_arg()).join("registry/extra.member");
    std::fs::write(&stray, "1\n").unwrap();
    let out = c.cli(&["cluster", "up", "--resume"]);
    assert!(out.contains("resumed: 3 servers"), "{out}");
    assert!(!stray.exists(), "the stray marker stays");
    let back = c.local("out.bin");
    for i in 0..4 {
        c.cli(&["get", &format!("/p{i}"), arg(&back)]);
        assert!(std::fs::read(&back).unwrap() == data, "/p{i} differs");
    }
    assert!(c.cli(&["cluster", "down"]).contains("3 servers stopped"));
}

/// Capacities of the cluster's servers, from `benchfs stats --json`.
fn capacities(c: &ClusterDir) -> Vec<u64> {
    let out = c.cli(&["stats", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["capacity_bytes"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_resumed_server_keeps_settings_the_environment_gave_the_cluster() {
    // Found by a hostile-user run: settings given to `cluster up` by BENCHFS_* variables
    // (a capacity, huge pages: no flag sets them) were not in the cluster's configuration,
    // so a server started again by `--resume` came back with the defaults, unbounded.
    let c = ClusterDir::new("c");
    let capacity = 96u64 << 20;
    let env = [(
        "BENCHFS_STORAGE_CAPACITY",
        Path::new(&capacity.to_string()).to_path_buf(),
    )];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    c.run_with_env(&["cluster", "up", "--servers", "2"], &env)
        .ok();
    assert_eq!(capacities(&c), [capacity, capacity]);
    let config = std::fs::read_to_string(c.dir.join("benchfs.toml")).unwrap();
    assert!(
        config.contains(&format!("capacity = {capacity}")),
        "{config}"
    );
    kill_node(&c, "node1", c.pids()[1]);
    c.cli(&["cluster", "up", "--resume"]);
    assert_eq!(capacities(&c), [capacity, capacity], "after --resume");
    assert!(c.cli(&["cluster", "down"]).contains("2 servers stopped"));
}

#[test]
fn cluster_up_takes_a_directory_with_quotes_and_backslashes() {
    // Regression: `cluster up` pasted the directory into benchfs.toml unescaped, so a path
    // with a quote or a backslash made a configuration that did not parse.
    let c = ClusterDir::new(r#"we"ird\dir"#);
    c.cli(&["cluster", "up", "--servers", "1"]);
    let local = c.local("in.bin");
    std::fs::write(&local, b"through an awkward directory").unwrap();
    c.cli(&["put", arg(&local), "/f"]);
    assert_eq!(c.cli(&["cat", "/f"]), "through an awkward directory");
}

#[test]
fn cluster_up_refuses_more_replicas_than_servers() {
    // Regression: `cluster up --replicas 3 --servers 2` started a cluster that could not
    // keep three copies, without a word.
    let c = ClusterDir::new("c");
    let stderr = c
        .run(&["cluster", "up", "--servers", "2", "--replicas", "3"])
        .failed();
    assert!(
        stderr.contains("--replicas 3") && stderr.contains("2 servers"),
        "{stderr}"
    );
    assert!(!c.dir.join("pids").exists(), "no server was started");
}

#[test]
fn a_job_secret_reaches_servers_and_file_commands() {
    // Regression: the command line had no way to pass a job secret, so it could neither
    // start servers with one nor talk to them.
    let c = ClusterDir::new("c");
    let secret = c.local("secret");
    std::fs::write(&secret, b"job-7-secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.cli(&[
        "cluster",
        "up",
        "--servers",
        "2",
        "--secret-file",
        arg(&secret),
    ]);
    let local = c.local("in.bin");
    std::fs::write(&local, b"guarded").unwrap();

    // A refusal says why (found by a hostile run: a bare "permission denied").
    let stderr = c.run(&["put", arg(&local), "/f"]).failed();
    assert!(
        stderr.contains("refused this client: the server has a job secret and this client none"),
        "{stderr}"
    );
    let wrong = c.local("wrong-secret");
    std::fs::write(&wrong, b"job-8-secret").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = c
        .run(&["put", arg(&local), "/f", "--secret-file", arg(&wrong)])
        .failed();
    assert!(
        stderr.contains("job secret differs from the one the server was started with"),
        "{stderr}"
    );
    // Servers that answered and refused are not called unreachable (a hostile run).
    let status = c.run(&["cluster", "status"]).failed();
    assert!(
        status.contains("node0 (refused)") && !status.contains("unreachable"),
        "{status}"
    );
    // An empty secret file would be no secret at all.
    let empty = c.local("empty-secret");
    std::fs::write(&empty, b"").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = c.run(&["cat", "/f", "--secret-file", arg(&empty)]).failed();
    assert!(stderr.contains("empty"), "{stderr}");
    // A mount without it says so, not that no server answered.
    let mnt = c.local("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let stderr = c.run(&["mount", arg(&mnt)]).failed();
    assert!(
        stderr.contains("let this mount in") && stderr.contains("job secret"),
        "{stderr}"
    );
    c.cli(&["put", arg(&local), "/f", "--secret-file", arg(&secret)]);
    let env = [("BENCHFS_SECRET_FILE", secret.as_path())];
    assert_eq!(c.run_with_env(&["cat", "/f"], &env).ok(), "guarded");

    let open = c.local("open-secret");
    std::fs::write(&open, b"job-7-secret").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = c.run(&["cat", "/f", "--secret-file", arg(&open)]).failed();
    assert!(
        stderr.contains(arg(&open)) && stderr.contains("group or others"),
        "{stderr}"
    );
    let other = ClusterDir::new("other");
    let stderr = other
        .run(&[
            "cluster",
            "up",
            "--servers",
            "1",
            "--secret-file",
            arg(&open),
        ])
        .failed();
    assert!(stderr.contains(arg(&open)), "{stderr}");
    assert!(!other.dir.join("pids").exists(), "no server was started");
}

/// Regression, found by a hostile run: `cluster up --resume` without `--secret-file`
/// restarted the servers of a cluster made with a job secret with none, open to anyone.
#[test]
fn resume_keeps_the_job_secret_the_cluster_was_started_with() {
    let c = ClusterDir::new("c");
    let secret = c.local("secret");
    std::fs::write(&secret, b"job-8-secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_secret = ["--secret-file", arg(&secret)];
    let up = ["cluster", "up", "--servers", "2", "--backend", "iouring"];
    c.cli(&[&up[..], &with_secret].concat());
    let pids = c.pids();
    c.cli(&["cluster", "down"]);
    c.cli(&["cluster", "up", "--resume"]);
    let local = c.local("in.bin");
    std::fs::write(&local, b"guarded").unwrap();
    let stderr = c.run(&["put", arg(&local), "/f"]).failed();
    assert!(stderr.contains("refused this client"), "{stderr}");
    c.cli(&[&["put", arg(&local), "/f"][..], &with_secret].concat());

    // With one server still running, a different secret (or none recorded) is refused.
    let killed = c.pids()[1];
    assert!(!pids.contains(&killed), "servers were restarted");
    kill_node(&c, "node1", killed);
    let other = c.local("other-secret");
    std::fs::write(&other, b"another-secret").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = c
        .run(&["cluster", "up", "--resume", "--secret-file", arg(&other)])
        .failed();
    assert!(
        stderr.contains("is not the one the running servers"),
        "{stderr}"
    );
    // Nor the recorded file with another secret in it now (found by a hostile run: the
    // killed server came back with it, and no client could use the cluster).
    std::fs::write(&secret, b"job-8-secret-changed").unwrap();
    let stderr = c.run(&["cluster", "up", "--resume"]).failed();
    assert!(stderr.contains("changed since"), "{stderr}");
    std::fs::write(&secret, b"job-8-secret\n").unwrap();
    c.cli(&["cluster", "up", "--resume"]);
    assert_eq!(
        c.run(&[&["cat", "/f"][..], &with_secret].concat()).ok(),
        "guarded"
    );
}

#[test]
fn local_file_errors_name_the_local_path() {
    // Regression: local I/O errors printed only the OS error ("No such file or directory
    // (os error 2)"), not which local file it was about.
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        ..Default::default()
    });
    write_file(&cluster.client(), "/f", b"remote");
    let local = tempfile::tempdir_in(common::test_root()).unwrap();
    let missing = local.path().join("missing.bin");
    let stderr = on(&cluster, &["put", arg(&missing), "/g"]).failed();
    assert!(stderr.contains(arg(&missing)), "{stderr}");

    let nowhere = local.path().join("no-such-dir").join("out.bin");
    let stderr = on(&cluster, &["get", "/f", arg(&nowhere)]).failed();
    assert!(stderr.contains(arg(&nowhere)), "{stderr}");

    let file = local.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("sub");
    let stderr = on(
        &cluster,
        &[
            "bench",
            "ior",
            "-b",
            "1m",
            "--baseline",
            arg(&under_file),
            "--out",
            arg(&local.path().join("out")),
        ],
    )
    .failed();
    assert!(stderr.contains(arg(&under_file)), "{stderr}");
}

#[test]
fn get_writes_through_links_and_into_devices_without_replacing_them() {
    // Regression: get renamed its staged copy over the destination whatever it was, so
    // `benchfs get /f /dev/null` replaced the device with a regular file, and a symbolic
    // link with a file (its target unchanged). Now it writes through a link to its target,
    // as cp does, and into a device or pipe in place.
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..Default::default()
    });
    write_file(&cluster.client(), "/f", b"remote bytes");
    let local = tempfile::tempdir_in(common::test_root()).unwrap();
    let target = local.path().join("target");
    std::fs::write(&target, b"old").unwrap();
    let link = local.path().join("link");
    std::os::unix::fs::symlink("target", &link).unwrap();
    on(&cluster, &["get", "/f", arg(&link)]).ok();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"remote bytes");
    // Standard output a pipe: /dev/stdout ends at a link to "pipe:[...]", which names no
    // path (get tried to stage a copy in /proc/self/fd; found by a hostile run).
    let piped = on(&cluster, &["get", "/f", "/dev/stdout"]).ok();
    assert_eq!(piped, "remote bytes");

    let null = local.path().join("null");
    let made = std::process::Command::new("mknod")
        .args(["-m", "666", arg(&null), "c", "1", "3"])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        common::skip("the device half", "mknod needs root");
        return;
    }
    on(&cluster, &["get", "/f", arg(&null)]).ok();
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(&null).unwrap().file_type();
    assert!(
        kind.is_char_device(),
        "the device is still a device: {kind:?}"
    );
    assert_eq!(local_names(local.path()), ["link", "null", "target"]);
}

#[test]
fn cluster_down_stops_this_clusters_servers_and_nothing_else() {
    // Regression: `cluster down` signalled whatever pids its pids file held, so a pid
    // since reused by another program was killed, and a server restarted by hand was left
    // running; and a relative --dir went into the config as is, so the cluster could not
    // be used from another directory. Now down stops every benchfsd whose command line
    // names the cluster's config, and --dir is recorded absolute.
    let cluster = ClusterDir::new("c");
    let up = ["cluster", "up", "--servers", "2", "--dir", "c"];
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_benchfs"));
    run_benchfs(command.current_dir(cluster.root.path()).args(up), &up).ok();
    cluster.cli(&["mkdir", "/d"]);
    assert!(cluster.cli(&["ls", "/"]).contains('d'));

    let pids_path = cluster.dir.join("pids");
    let pids = cluster.pids();
    let mut stranger = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap();
    std::fs::write(&pids_path, format!("{}\n{}\n", pids[0], stranger.id())).unwrap();
    wait_until_unlocked(&cluster.dir.join("data").join("node1"));
    // A cluster with a server down is not healthy, and scripts check the exit status.
    let status = cluster.run(&["cluster", "status"]).failed();
    assert!(status.contains("node1 (unreachable)"), "{status}");
    let mut by_hand = std::process::Command::new(env!("CARGO_BIN_EXE_benchfsd"))
        .arg("--config")
        .arg(cluster.dir.join("benchfs.toml"))
        .args(["--node-id", "node1", "--data-dir"])
        .arg(cluster.dir.join("data").join("node1"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(cluster.local("by_hand.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let exited = by_hand.try_wait().unwrap();
    assert!(
        exited.is_none(),
        "the restarted server runs: {exited:?} {}",
        std::fs::read_to_string(cluster.local("by_hand.log")).unwrap()
    );

    let out = cluster.cli(&["cluster", "down"]);
    assert!(out.contains("2 servers stopped"), "{out}");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "a program that took a server's old pid is left alone"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while by_hand.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server restarted by hand still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_benchmark_without_clients_is_refused() {
    // Found by a hostile-user run: `bench ior --clients 0` ran and exited 0.
    for workload in ["ior", "mdtest"] {
        let err = benchfs(&["bench", workload, "--clients", "0"], &[]).failed();
        assert!(err.contains("--clients"), "{workload}: {err}");
    }
}

#[test]
fn misleading_refusals_say_what_was_refused() {
    // Found by a hostile-user run: `rm /` said "server busy", and `placement-stats` with
    // many servers blamed node ids the user never gave.
    let cluster = Cluster::start(ClusterSpec::default());
    for root in ["/", "//", "/."] {
        let err = on(&cluster, &["rm", root]).failed();
        assert!(
            err.contains("root directory cannot be removed"),
            "{root}: {err}"
        );
    }
    // `rm` of a missing path named the lookup before it: "stat /missing".
    let err = on(&cluster, &["rm", "/missing"]).failed();
    assert!(
        err.contains("unlink /missing") && err.contains("no such file"),
        "{err}"
    );
    // `mkdir /q/r` under a missing /q said "mkdir /q: no such file or directory".
    let err = on(&cluster, &["mkdir", "/q/r"]).failed();
    assert!(
        err.contains("mkdir /q/r: node") && err.contains("no such file"),
        "{err}"
    );
    // `cat /` said "no such file or directory" (the root has no record to open).
    let err = on(&cluster, &["cat", "/"]).failed();
    assert!(err.contains("is a directory"), "{err}");
    let fs = cluster.client();
    fs.mkdir("/kept", 0o755).unwrap();
    assert_eq!(names(&fs, "/"), ["kept"]);
    let err = benchfs(&["placement-stats", "--servers", "100000000"], &[]).failed();
    assert!(err.contains("--servers 100000000"), "{err}");
    let err = benchfs(&["placement-stats", "--vnodes", "5000"], &[]).failed();
    assert!(err.contains("--vnodes 5000"), "{err}");
    let args = ["placement-stats", "--servers", "65536", "--vnodes", "1024"];
    let err = benchfs(&args, &[]).failed();
    assert!(err.contains("ring points"), "{err}");
}

#[test]
fn rpc_bench_takes_size_suffixes_and_refuses_an_empty_payload() {
    // Found by a hostile-user run: `--sizes 1m` was "invalid digit found in string", and
    // `--sizes 0` printed a bandwidth of 0.00 MiB/s.
    let args = [
        "rpc-bench",
        "--busy-poll-us",
        "0",
        "--pings",
        "100",
        "--warmup",
        "10",
        "--seconds",
        "0.1",
        "--sizes",
        "4k,1m",
    ];
    let out = benchfs(&args, &[]).ok();
    for size in [4096, 1 << 20] {
        assert!(
            out.lines().any(|l| l.starts_with("bw ")
                && l.contains(&format!(" payload_bytes={size} "))
                && !l.contains(" pings=0 ")),
            "no bandwidth figure of {size} bytes in\n{out}"
        );
    }
    let err = benchfs(&["rpc-bench", "--sizes", "0"], &[]).failed();
    assert!(err.contains("at least 1 byte"), "{err}");
    // 64 GiB in flight and a terabyte of payloads: refused before a server starts (the
    // server was killed for memory, and all that showed was a reset connection).
    let args = [
        "rpc-bench",
        "--window",
        "1024",
        "--sizes",
        "64m",
        "--payload-set-bytes",
        "1024g",
    ];
    let err = benchfs(&args, &[]).failed();
    assert!(err.contains("MiB of memory"), "{err}");
    let args = ["rpc-bench", "--sizes", "1m", "--payload-set-bytes", "3"];
    let err = benchfs(&args, &[]).failed();
    assert!(err.contains("less than one 1048576-byte payload"), "{err}");
}

/// Resident memory of each server the cluster in `c` started, in bytes.
fn server_rss(c: &ClusterDir) -> Vec<u64> {
    let pids = std::fs::read_to_string(c.dir.join("pids")).unwrap();
    pids.split_whitespace()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            kib * 1024
        })
        .collect()
}

#[test]
fn cluster_up_prefaults_chunk_memory_when_asked() {
    let prefault: u64 = 256 << 20;
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "2"]);
    let plain = server_rss(&c);
    assert!(
        plain.iter().all(|&rss| rss < prefault),
        "control: {plain:?}"
    );
    c.cli(&["cluster", "down"]);
    let up = |servers: &str, bytes: u64| {
        let bytes = bytes.to_string();
        c.run(&[
            "cluster",
            "up",
            "--servers",
            servers,
            "--wipe",
            "--prefault-bytes",
            &bytes,
        ])
    };
    up("2", prefault).ok();
    let rss = server_rss(&c);
    assert!(rss.iter().all(|&rss| rss >= prefault), "{rss:?}");
    // The memory serves: a file written and read back.
    let local = c.local("in.bin");
    let data = pattern(3 << 20, 5);
    std::fs::write(&local, &data).unwrap();
    c.cli(&["put", arg(&local), "/f"]);
    let back = c.local("out.bin");
    c.cli(&["get", "/f", arg(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
    c.cli(&["cluster", "down"]);
    // More than the host has is refused at start, by name.
    let err = up("1", 1 << 60).failed();
    assert!(
        err.contains("--prefault-bytes") && err.contains("available"),
        "{err}"
    );
    assert!(!c.dir.join("pids").exists(), "no server was started");
    // --resume takes the prefault from the cluster's configuration, and checks it too.
    up("2", 1 << 20).ok();
    c.cli(&["cluster", "down"]);
    let config = c.dir.join("benchfs.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let huge = format!("prefault_bytes = {}", 1u64 << 60);
    std::fs::write(&config, text.replace("prefault_bytes = 1048576", &huge)).unwrap();
    let err = c.run(&["cluster", "up", "--resume"]).failed();
    assert!(
        err.contains("storage.prefault_bytes") && err.contains("2 server"),
        "{err}"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // Found by a hostile-user run: `benchfs stats | head -1` panicked ("failed printing
    // to stdout: Broken pipe") and exited 101. Here the reader is gone before anything
    // is written, so every write meets the closed pipe.
    let cluster = Cluster::start(ClusterSpec::default());
    write_file(&cluster.client(), "/f", b"x");
    let commands = [
        &["stats"][..],
        &["ls", "/"],
        &["stats", "--json"],
        &["cluster", "status"],
    ];
    for args in commands {
        let mut all = args.to_vec();
        all.extend(["--dir", arg(cluster.dir.path())]);
        unread(&all);
    }
}

/// Runs `benchfs args` with its output going into a pipe nobody reads (closed before
/// the command starts writing); checks that it succeeds without a panic.
#[track_caller]
fn unread(args: &[&str]) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_benchfs"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

/// Regression: `cluster down` sent SIGTERM alone, which a stopped server (SIGSTOP) takes
/// only once it runs again, so it was killed after the wait, and a tiered server lost what
/// its clean stop writes back (the clean-stop mark says whether the stop was clean).
#[test]
fn cluster_down_stops_a_stopped_server_cleanly() {
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "2", "--backend", "tiered"]);
    let local = c.local("in.bin");
    let data = pattern(300_000, 6);
    std::fs::write(&local, &data).unwrap();
    c.cli(&["put", arg(&local), "/kept"]);
    let pids = std::fs::read_to_string(c.dir.join("pids")).unwrap();
    for pid in pids.split_whitespace() {
        let status = std::process::Command::new("kill")
            .args(["-STOP", pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let out = c.cli(&["cluster", "down", "--timeout", "30"]);
    assert!(out.contains("2 servers stopped (0 forced)"), "{out}");
    for node in ["node0", "node1"] {
        let mark = c.dir.join("data").join(node).join("stopped-cleanly");
        assert!(mark.exists(), "{node} stopped cleanly: {}", mark.display());
    }
    c.cli(&["cluster", "up", "--resume"]);
    let back = c.local("out.bin");
    c.cli(&["get", "/kept", arg(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
    c.cli(&["cluster", "down"]);
}

/// Regression, found by a hostile run: clients that tried to connect to a stopped server
/// (SIGSTOP) left connections UCX had accepted but not yet announced; the server destroyed
/// its listener when it began to drain, and UCX then called into the freed listener
/// (SIGSEGV in `ucp_cm_server_conn_request_cb`), so `cluster down` reported acknowledged
/// writes possibly lost. Now the server refuses connections while it drains and leaves its
/// listener to the process's exit.
#[test]
fn a_server_stopped_while_clients_connect_still_stops_cleanly() {
    for round in 0..2 {
        let c = ClusterDir::new("c");
        c.cli(&["cluster", "up", "--servers", "1"]);
        let pid = c.pids()[0].to_string();
        let signal = |sig: &str| {
            let status = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap();
            assert!(status.success());
        };
        signal("-STOP");
        let connecting: Vec<_> = (0..4)
            .map(|_| c.spawn(&["cluster", "wait", "--servers", "1", "--timeout", "1"]))
            .collect();
        for client in connecting {
            let out = client.wait_with_output().unwrap();
            assert!(!out.status.success(), "a stopped server answered");
        }
        let down = c.run(&["cluster", "down"]);
        let log = std::fs::read_to_string(c.dir.join("logs/node0.log")).unwrap();
        assert!(!log.contains("Caught signal"), "round {round}: {log}");
        let out = down.ok();
        assert!(out.contains("1 server stopped (0 forced)"), "{out}");
        assert!(c.dir.join("data/node0/stopped-cleanly").exists(), "{log}");
    }
}

/// Regression, found by a hostile run: a tiered server whose final write-back failed (its
/// disk full) lost what it had acknowledged, and `cluster down` reported a clean stop.
/// Now the server exits with an error and `cluster down` fails, naming it. The chunk
/// directory replaced by a file makes the write-back fail here.
#[test]
fn cluster_down_reports_a_server_whose_final_sync_failed() {
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "1", "--backend", "tiered"]);
    let local = c.local("in.bin");
    std::fs::write(&local, pattern(100_000, 8)).unwrap();
    c.cli(&["put", arg(&local), "/unsynced"]);
    let chunks = c.dir.join("data/node0/chunks");
    std::fs::remove_dir_all(&chunks).unwrap();
    std::fs::write(&chunks, b"not a directory").unwrap();
    let err = c.run(&["cluster", "down"]).failed();
    assert!(
        err.contains("1 of 1 servers stopped without making what they acknowledged durable"),
        "{err}"
    );
    assert!(err.contains("node0 (pid"), "names the server: {err}");
    assert!(
        err.contains("store sync"),
        "quotes the server's last words: {err}"
    );
    let mark = c.dir.join("data/node0/stopped-cleanly");
    assert!(!mark.exists(), "no clean-stop mark: {}", mark.display());
}

/// A tiered server killed before `cluster down` lost what it had not written back:
/// `down` fails naming it, once (helper-97: it stopped the others and said nothing). A
/// file server killed so keeps what it acknowledged: `down` notes it and succeeds.
#[test]
fn cluster_down_names_a_server_that_exited_before_it() {
    for (backend, loses) in [("tiered", true), ("file", false)] {
        let c = ClusterDir::new(backend);
        c.cli(&["cluster", "up", "--servers", "2", "--backend", backend]);
        let local = c.local("in.bin");
        std::fs::write(&local, pattern(300_000, 9)).unwrap();
        c.cli(&["put", arg(&local), "/x"]);
        kill_node(&c, "node0", c.pids()[0]);
        let down = c.run(&["cluster", "down"]);
        if loses {
            let err = down.failed();
            assert!(
                err.contains("1 of 2 servers stopped without making"),
                "{err}"
            );
            assert!(
                err.contains("node0 (exited before cluster down, log"),
                "{err}"
            );
            c.cli(&["cluster", "down"]);
        } else {
            let out = down.ok();
            assert!(out.contains("node0 (exited before cluster down"), "{out}");
            assert!(out.contains("1 server stopped"), "{out}");
        }
    }
}

/// [`write_in_place`] into `path`, which holds `data`, and checks that the whole file reads
/// back with it.
fn write_in_place_and_read_back(fs: &benchfs::blocking::BenchFS, path: &str, data: &[u8]) {
    write_in_place(fs, path);
    let mut want = data.to_vec();
    want[10..18].copy_from_slice(IN_PLACE);
    assert!(
        read_file(fs, path) == want,
        "{path} reads back after its write in place"
    );
}

/// Regression, found by a hostile run: with an io_uring server's disk full, `rm` failed
/// with EIO (its journal had no room for the delete), so the space was never reclaimed,
/// and `cluster up --resume` failed writing the journal's snapshot.
#[test]
fn a_full_disk_still_deletes_frees_the_space_and_resumes() {
    let c = ClusterDir::new("c");
    let Some(_disk) = SmallDisk::mount(&c.dir.join("data"), "24m") else {
        return;
    };
    let up = ["cluster", "up", "--servers", "1", "--backend", "iouring"];
    c.cli(&[&up[..], &["--chunk-size", "1m"]].concat());
    // Directories with long names: removing them takes more journal than a page's tail.
    let dirs: Vec<String> = (0..24)
        .map(|i| format!("/d{i:02}-{}", "n".repeat(240)))
        .collect();
    for dir in &dirs {
        c.cli(&["mkdir", dir]);
    }
    let data = pattern(3 << 20, 9);
    let local = c.local("in.bin");
    std::fs::write(&local, &data).unwrap();
    // Its name is longer than any refused below, so its record cannot fit where theirs did not.
    let rewritten = format!("/w-{}", "w".repeat(250));
    c.cli(&["put", arg(&local), &rewritten]);
    let mut stored = Vec::new();
    let full = (0..20).find_map(|i| {
        let name = format!("/f{i}");
        let run = c.run(&["put", arg(&local), &name]);
        if run.success {
            stored.push(name);
            return None;
        }
        Some(run.stderr)
    });
    let full = full.expect("the disk never filled");
    assert!(full.contains("no space left"), "{full}");
    assert!(
        stored.len() >= 3,
        "{} files before the disk filled",
        stored.len()
    );
    // The last bytes go to a file beside the servers' data, as another program's would.
    let mut filler = std::fs::File::create(c.dir.join("data/filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[1u8; 4096]).is_ok() {}
    drop(filler);
    // New names are refused, and a refused one leaves nothing behind (its record stayed
    // in the server's table until a restart).
    let config = benchfs::config::ServerConfig::from_file(c.dir.join("benchfs.toml")).unwrap();
    let fs = benchfs::blocking::BenchFS::connect(&config).unwrap();
    let late = |i: usize| format!("/late{i:04}-{}", "m".repeat(200));
    let refused = (0..5000).find_map(|i| Some((i, fs.mkdir(&late(i), 0o755).err()?)));
    let (i, e) = refused.expect("a full disk never refused a mkdir");
    assert!(e.to_string().contains("no space left"), "{e}");
    let after = fs.stat(&late(i)).map(|m| m.kind);
    assert!(after.is_err(), "a refused mkdir left {after:?}");
    // A write in place takes no room but its time's record in the journal: its close
    // succeeds on the full disk (the time then moves in memory alone) and its bytes stay.
    write_in_place_and_read_back(&fs, &rewritten, &data);
    drop(fs);
    // A server killed on the full disk starts again on it (found by a hostile run: "node.
    // data_dir ... is not writable: No space left on device"), or nothing it holds could
    // be read or deleted.
    kill_node(&c, "node0", c.pids()[0]);
    c.cli(&["cluster", "up", "--resume"]);
    for name in dirs.iter().chain(&stored).chain([&rewritten]) {
        c.cli(&["rm", name]);
    }
    c.cli(&["put", arg(&local), "/again"]);
    c.cli(&["cluster", "down"]);
    c.cli(&["cluster", "up", "--resume"]);
    let back = c.local("out.bin");
    c.cli(&["get", "/again", arg(&back)]);
    assert!(std::fs::read(&back).unwrap() == data, "/again reads back");
    let listed = c.cli(&["ls", "/"]);
    assert!(
        !listed.contains("/d0") && !listed.contains("d00-"),
        "{listed}"
    );
    c.cli(&["cluster", "down"]);
}

/// Found by a hostile run: after a `--resume` that failed to start a killed server, `pids`
/// listed only that server's pid, not the servers still running.
#[test]
fn a_failed_resume_leaves_every_running_server_in_pids() {
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "2", "--backend", "iouring"]);
    let pids = c.pids();
    kill_node(&c, "node1", pids[1]);
    let data = c.dir.join("data/node1");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    c.run(&["cluster", "up", "--resume"]).failed();
    assert_eq!(c.pids(), [pids[0]], "pids lists the server still running");
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // Found by a hostile run: `benchfs cluster up | true` panicked in println! once the
    // pipe's reader had gone, after starting the servers.
    let c = ClusterDir::new("c");
    unread(&["cluster", "up", "--servers", "1", "--dir", c.dir_arg()]);
    // The cluster it started is there.
    let root = c.cli(&["stat", "/"]);
    assert!(root.starts_with("/: directory"), "{root}");
    // A directory has no chunks: `stat /` showed the smallest chunk size for the root.
    assert!(!root.contains("chunk size"), "{root}");
}

#[test]
fn a_small_chunk_size_alone_starts_a_cluster() {
    // Found by a hostile run: `cluster up --chunk-size 4096` was refused until
    // --rdma-threshold came down too (the default threshold is above such a chunk), and
    // sizes took no suffix here though `bench` takes them (a later hostile run).
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "2", "--chunk-size", "4k"]);
    let data = pattern(50_000, 3);
    let local = c.local("in.bin");
    std::fs::write(&local, &data).unwrap();
    c.cli(&["put", arg(&local), "/f"]);
    let stat = c.cli(&["stat", "/f"]);
    assert!(stat.contains("chunk size 4096"), "{stat}");
    let back = c.local("out.bin");
    c.cli(&["get", "/f", arg(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
    // A threshold given is the user's: one above the chunk size is still refused.
    let other = ClusterDir::new("d");
    let err = other
        .run(&[
            "cluster",
            "up",
            "--chunk-size",
            "4096",
            "--rdma-threshold",
            "65536",
        ])
        .failed();
    assert!(err.contains("65536") && err.contains("4096"), "{err}");
}

#[test]
fn cluster_down_refuses_a_directory_with_no_cluster() {
    // Found by a hostile run: `cluster down --dir /nonexistent` said "no server of this
    // cluster was running" and exited 0, while every other command says there is no
    // cluster there; a mistyped directory in a job script went unnoticed.
    let c = ClusterDir::new("never-up");
    let err = c.run(&["cluster", "down"]).failed();
    assert!(err.contains("no cluster in"), "{err}");
    // A cluster that stopped already is no error.
    c.cli(&["cluster", "up", "--servers", "1"]);
    c.cli(&["cluster", "down"]);
    let again = c.cli(&["cluster", "down"]);
    assert!(
        again.contains("no server of this cluster was running"),
        "{again}"
    );
}

#[test]
fn cluster_down_stops_the_servers_with_no_kill_on_path() {
    // Found by a hostile run: the stop ran `kill` through PATH, ignored that it was not
    // there, and said "1 servers stopped" with the server still running.
    let c = ClusterDir::new("no-kill");
    c.cli(&["cluster", "up", "--servers", "2"]);
    let pids = c.pids();
    let empty = c.local("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let down = c
        .run_with_env(&["cluster", "down"], &[("PATH", &empty)])
        .ok();
    assert!(down.contains("2 servers stopped (0 forced)"), "{down}");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = stat.is_empty() || stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z'));
        assert!(gone, "server {pid} still runs after cluster down: {stat}");
    }
}

#[test]
fn ls_prints_one_line_per_entry_whatever_its_name() {
    // Found by hostile-user runs: a name with a newline printed as two entries, and a
    // symbolic link as a file.
    let cluster = Cluster::start(ClusterSpec {
        servers: 1,
        ..Default::default()
    });
    write_file(&cluster.client(), "/a\nb", b"x");
    write_file(&cluster.client(), "/plain", b"y");
    write_file(&cluster.client(), "/q -> r", b"z");
    let fs = cluster.client();
    fs.block_on(fs.client().symlink("/plain", "/to-plain"))
        .unwrap();
    let out = on(&cluster, &["ls", "/"]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].ends_with(r#" "a\nb""#), "{out}");
    assert!(
        lines[1].starts_with("- ") && lines[1].ends_with(" plain"),
        "{out}"
    );
    // A name that reads as a link is quoted.
    assert!(
        lines[2].starts_with("- ") && lines[2].ends_with(r#" "q -> r""#),
        "{out}"
    );
    // A link shows as one, with where it points, as `ls -l` shows it.
    assert!(
        lines[3].starts_with("l ") && lines[3].ends_with(" to-plain -> /plain"),
        "{out}"
    );
    // So does `stat`, control characters escaped.
    let stat = on(&cluster, &["stat", "/a\nb"]).ok();
    assert!(stat.starts_with(r#""/a\nb": file, size 1,"#), "{stat}");
    let stat = on(&cluster, &["stat", "/to-plain"]).ok();
    assert!(
        stat.starts_with("/to-plain: symbolic link to /plain, size 6,"),
        "{stat}"
    );
}

/// A link whose target a server lost is listed still, and named after the listing: `ls`
/// lists the rest of its directory and fails (found by a hostile-user run: it printed
/// nothing).
#[test]
fn ls_lists_a_directory_with_a_link_whose_target_is_lost() {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..Default::default()
    });
    let fs = cluster.client();
    // A link whose record and target (its chunk 0) lie on different servers.
    let (link, holder) = (0..64)
        .find_map(|i| {
            let link = format!("/l{i}");
            fs.block_on(fs.client().symlink("plain", &link)).unwrap();
            let file_id = fs.stat(&link).unwrap().file_id;
            let record = cluster.replicas_of(PlacementKey::Metadata(&link))[0];
            let chunk = cluster.replicas_of(PlacementKey::Chunk { file_id, index: 0 })[0];
            (record != chunk).then_some((link, chunk))
        })
        .expect("a link with its record and target apart");
    // A file whose record the server that loses the target does not hold.
    let plain = (0..64)
        .map(|i| format!("/plain{i}"))
        .find(|p| cluster.replicas_of(PlacementKey::Metadata(p))[0] != holder)
        .unwrap();
    write_file(&fs, &plain, b"data");
    drop(fs);
    cluster.kill(holder);
    cluster.restart(holder);
    let run = on(&cluster, &["ls", "/"]);
    assert!(!run.success, "ls succeeded over a lost link target");
    let name = &link[1..];
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("- ") && l.ends_with(&format!(" {}", &plain[1..])))
            && run
                .stdout
                .lines()
                .any(|l| l.starts_with("l ") && l.ends_with(&format!(" {name} -> ?"))),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains(&link), "{}", run.stderr);
}

#[test]
fn put_from_standard_input_get_into_a_directory_and_ls_of_a_file() {
    // Found by a hostile run: `put -` looked for a file named "-", `get /f dir` refused a
    // directory, and `ls /file` failed with "not a directory".
    let cluster = Cluster::start(ClusterSpec::default());
    let dir = tempfile::tempdir_in(common::test_root()).unwrap();
    let source = dir.path().join("source");
    std::fs::write(&source, b"from standard input").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_benchfs"))
        .args(["put", "-", "/piped", "--dir", arg(cluster.dir.path())])
        .stdin(std::fs::File::open(&source).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    on(&cluster, &["get", "/piped", arg(&into)]).ok();
    assert_eq!(
        std::fs::read(into.join("piped")).unwrap(),
        b"from standard input"
    );
    let listed = on(&cluster, &["ls", "/piped"]).ok();
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["-           19 /piped"]
    );
}

/// A disk store syncs its dirty chunks one open file at a time: it opened every one at
/// once, so with 2048 dirty chunks under the common limit of 1024 descriptors `fsync` failed with
/// EIO and a clean `cluster down` reported acknowledged writes possibly lost (EMFILE).
#[test]
fn syncing_more_dirty_chunks_than_descriptors_succeeds() {
    let cluster = ClusterDir::new("c");
    let up = [
        "cluster",
        "up",
        "--servers",
        "1",
        "--backend",
        "file",
        "--chunk-size",
        "4k",
        "--dir",
        cluster.dir_arg(),
    ];
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_benchfs"))
        .args(up);
    run_benchfs(&mut command, &up).ok();
    let data = pattern(8 << 20, 5);
    let local = cluster.root.path().join("data.bin");
    std::fs::write(&local, &data).unwrap();
    cluster.cli(&["put", local.to_str().unwrap(), "/f"]);
    let down = cluster.run(&["cluster", "down"]);
    assert!(down.success, "cluster down failed: {}", down.stderr);
    cluster.cli(&["cluster", "up", "--resume"]);
    let back = cluster.root.path().join("back.bin");
    cluster.cli(&["get", "/f", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data);
}

/// `cluster wait` succeeds once every server is published and answers, and otherwise fails
/// within its `--timeout`, naming what is missing: a stopped server held its probe for the
/// whole 30 s RPC timeout, so `--timeout 2` took 30 s.
#[test]
fn cluster_wait_names_what_is_missing_within_its_timeout() {
    let c = ClusterDir::new("c");
    c.cli(&["cluster", "up", "--servers", "2"]);
    let out = c.cli(&["cluster", "wait", "--servers", "2"]);
    assert!(out.contains("2 servers published"), "{out}");
    // A timeout past any clock time waits as long as needed; it panicked adding it.
    let forever = u64::MAX.to_string();
    c.cli(&["cluster", "wait", "--servers", "2", "--timeout", &forever]);
    let err = c
        .run(&["cluster", "wait", "--servers", "3", "--timeout", "1"])
        .failed();
    assert!(
        err.contains("2 of 3 servers published") && err.contains("(node0, node1)"),
        "{err}"
    );

    let stopped = c.pids()[1];
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &stopped.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let waited = c.run(&["cluster", "wait", "--servers", "2", "--timeout", "2"]);
    let took = started.elapsed();
    signal("-CONT");
    let err = waited.failed();
    assert!(err.contains("published but not answering: node1"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(15),
        "cluster wait --timeout 2 took {took:?}"
    );
    assert!(err.contains(&format!("{}/logs", c.dir_arg())), "{err}");

    // It waits for a killed server started again within the timeout; it failed at once
    // on the dead one's registry entry.
    let status = std::process::Command::new("kill")
        .args(["-KILL", &stopped.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut waiting = c.spawn(&["cluster", "wait", "--servers", "2", "--timeout", "60"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "cluster wait gave up"
    );
    c.cli(&["cluster", "up", "--resume"]);
    let waited = waiting.wait_with_output().unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );

    // A malformed registry entry is named.
    let junk = c.dir.join("registry/junk.addr");
    std::fs::write(&junk, b"not an entry").unwrap();
    let err = c
        .run(&["cluster", "wait", "--servers", "2", "--timeout", "1"])
        .failed();
    assert!(err.contains(junk.to_str().unwrap()), "{err}");
    std::fs::remove_file(&junk).unwrap();
}

/// Two `cluster up` runs on one directory at once: one starts the cluster and the other
/// fails naming it, whichever comes first. Found by a hostile run: each started one of the
/// two servers, and both failed naming a server that had exited.
#[test]
fn racing_cluster_ups_start_one_cluster() {
    let c = ClusterDir::new("c");
    let up = || c.spawn(&["cluster", "up", "--servers", "2"]);
    let runs = [up(), up()].map(|child| child.wait_with_output().unwrap());
    let (won, lost): (Vec<_>, Vec<_>) = runs.iter().partition(|out| out.status.success());
    assert_eq!((won.len(), lost.len()), (1, 1), "{runs:?}");
    let refusal = String::from_utf8_lossy(&lost[0].stderr);
    assert!(
        refusal.contains("a cluster is already running in"),
        "{refusal}"
    );
    assert!(
        refusal.contains("another `benchfs cluster up` is starting the cluster in")
            || refusal.contains("a cluster is already running in"),
        "{refusal}"
    );
    assert_eq!(c.pids().len(), 2);
    let config = benchfs::config::ServerConfig::from_file(c.dir.join("benchfs.toml")).unwrap();
    let fs = benchfs::blocking::BenchFS::connect(&config).unwrap();
    write_file(&fs, "/after", b"both servers answer");
    assert_eq!(read_file(&fs, "/after"), b"both servers answer");
    let out = c.cli(&["cluster", "status"]);
    assert_eq!(out.lines().count(), 3, "{out}");
}

/// `cluster down` while `cluster up` starts the servers waits for it, then stops them all;
/// two `cluster down` at once stop the cluster once. Found by a hostile run: a down during
/// an up missed the servers not started yet, and two downs both reported the stop.
#[test]
fn cluster_downs_wait_for_a_cluster_up_and_each_other() {
    let c = ClusterDir::new("c");
    let up = c.spawn(&["cluster", "up", "--servers", "2"]);
    // The up writes the cluster's config with its lock held, before it starts a server.
    while !c.dir.join("benchfs.toml").exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let down = c.cli(&["cluster", "down"]);
    let up = up.wait_with_output().unwrap();
    assert!(up.status.success(), "{up:?}");
    assert!(down.contains("2 servers stopped (0 forced)"), "{down}");
    assert_eq!(
        running_servers(&c),
        0,
        "servers left running after the down"
    );

    c.cli(&["cluster", "up", "--resume"]);
    assert_eq!(running_servers(&c), 2);
    let downs = [c.spawn(&["cluster", "down"]), c.spawn(&["cluster", "down"])]
        .map(|child| child.wait_with_output().unwrap());
    let mut said: Vec<String> = downs
        .iter()
        .map(|out| {
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    said.sort();
    assert!(
        said[0].contains("2 servers stopped") && said[1].contains("no server"),
        "{said:?}"
    );
}

/// How many `benchfsd` processes run with cluster `c`'s config.
fn running_servers(c: &ClusterDir) -> usize {
    let config = c.dir.join("benchfs.toml");
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("{} ", config.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Regression (hostile-user run): a node's data directory that is a file system of its own
/// (a node-local disk mounted there), empty, was taken for an earlier cluster's data, and
/// `--wipe` then failed on the mount point ("Device or resource busy").
#[test]
fn a_data_directory_that_is_a_mount_point_starts_a_new_cluster_and_wipes() {
    let c = ClusterDir::new("c");
    let node_dir = c.dir.join("data").join("node0");
    let Some(_disk) = SmallDisk::mount(&node_dir, "16m") else {
        return;
    };
    // As mkfs.ext4 leaves it.
    let lost_found = node_dir.join("lost+found");
    std::fs::create_dir(&lost_found).unwrap();
    let up = ["cluster", "up", "--servers", "1", "--backend", "file"];
    c.cli(&up);
    let local = c.local("in.bin");
    std::fs::write(&local, pattern(100_000, 12)).unwrap();
    c.cli(&["put", arg(&local), "/kept"]);
    c.cli(&["cluster", "down"]);
    let stderr = c.run(&up).failed();
    assert!(
        stderr.contains("--wipe"),
        "the cluster's data is refused: {stderr}"
    );
    c.cli(&[&up[..], &["--wipe"]].concat());
    assert!(!c.cli(&["ls", "/"]).contains("kept"), "wiped");
    assert!(lost_found.is_dir(), "the file system's lost+found is kept");
    c.cli(&["cluster", "down"]);
}
