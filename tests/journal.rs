//! The metadata journal and data directory of a real server: damage that no crash can
//! leave, or a directory of another node or placement, stops `benchfsd` with a message
//! saying what to do, and the directory stays as it was.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use benchfs::blocking::OpenFlags;
use common::files::{read_file, write_file, write_in_place, C};
use common::{pattern, Cluster, ClusterSpec};

/// Starts a server of `cluster` by hand with `command`, its output in `log`, and returns
/// its exit status. The deadline is a liveness bound, not a timing assertion: a server that
/// comes up instead of refusing is killed and fails the test.
fn start_expecting_exit(cluster: &Cluster, mut command: Command, log: &Path) -> ExitStatus {
    let out = std::fs::File::create(log).unwrap();
    let mut child = command
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn benchfsd");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        let published = benchfs::registry::read(&cluster.registry())
            .map(|e| e.len())
            .unwrap_or(0);
        if published == cluster.spec.servers || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not refuse to start; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the journal record that holds byte `at` starts (the records' length fields say).
fn record_start(journal: &[u8], at: usize) -> usize {
    let mut pos = 0;
    loop {
        let len = u32::from_le_bytes(journal[pos..pos + 4].try_into().unwrap()) as usize;
        if at < pos + 8 + len {
            return pos;
        }
        pos += 8 + len;
    }
}

/// One flipped byte in the middle of a server's metadata journal was taken for a torn
/// tail: the server dropped every record after it, rewrote the journal and started as if
/// nothing had happened. Now it refuses, exits non-zero saying what to do, and leaves the
/// journal byte for byte as it was, so restoring the byte brings every file back.
#[test]
fn a_corrupt_journal_stops_the_server_and_stays_as_it_was() {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        backend: "file",
        ..Default::default()
    });
    let fs = cluster.client();
    let files: Vec<(String, Vec<u8>)> = (0..24u64)
        .map(|i| (format!("/j{i}"), pattern(1000 + 5000 * i as usize, i)))
        .collect();
    for (path, data) in &files {
        write_file(&fs, path, data);
    }
    drop(fs);
    assert!(cluster.stop(0), "benchfsd must exit 0 on SIGTERM");

    let journal = cluster.data_dir(0).join("metadata.journal");
    let original = std::fs::read(&journal).unwrap();
    let middle = original.len() / 2;
    let damaged_record = record_start(&original, middle);
    assert!(
        damaged_record > 0 && damaged_record + 200 < original.len(),
        "records on both sides of the damage ({} journal bytes)",
        original.len()
    );
    let mut damaged = original.clone();
    damaged[middle] ^= 0x10;
    std::fs::write(&journal, &damaged).unwrap();

    let log = cluster.dir.path().join("node0-refused.log");
    let command = cluster.server_command(&Cluster::node_id(0), &cluster.data_dir(0));
    let status = start_expecting_exit(&cluster, command, &log);
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "exit status {status}; output:\n{output}");
    let expected = format!(
        "benchfsd: metadata journal: {} is corrupt at byte {damaged_record} (",
        journal.display()
    );
    assert!(
        output.contains(&expected)
            && output.contains("); the server will not start on it. Move it aside to start with an empty namespace, or restore it from a copy"),
        "{output}"
    );
    let after = std::fs::read(&journal).unwrap();
    assert!(after == damaged, "the refused journal was changed");

    std::fs::write(&journal, &original).unwrap();
    cluster.restart(0);
    let fs = cluster.client();
    for (path, data) in &files {
        assert!(read_file(&fs, path) == *data, "{path} came back changed");
    }
}

/// The journal is compacted while the server runs (a thread writes the snapshot, the
/// records appended meanwhile follow it), and a server killed wherever the kill lands (a
/// compaction under way or not) comes back with exactly the files it acknowledged: the
/// deleted ones gone, the kept ones there.
#[test]
fn a_server_killed_while_compacting_its_journal_keeps_every_acknowledged_change() {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 1,
        backend: "file",
        ..Default::default()
    });
    let fs = cluster.client();
    // Long names make records of about 3.5 KiB, so a few thousand creates outgrow the
    // journal's 4 MiB compaction threshold several times.
    let mut dir = String::new();
    for level in 0..12 {
        dir.push_str(&format!("/{level:02}{}", "d".repeat(240)));
        fs.mkdir(&dir, 0o755).unwrap();
    }
    let mut kept = Vec::new();
    for i in 0..4_000u32 {
        let name = format!("{i:05}{}", "f".repeat(240));
        let path = format!("{dir}/{name}");
        let fd = fs.create(&path, 0o644).unwrap();
        fs.close(fd).unwrap();
        if i % 10 == 0 {
            kept.push(name);
        } else {
            fs.unlink(&path).unwrap();
        }
    }
    drop(fs);
    // Uncompacted, the journal would hold 4,000 creates and 3,600 deletes of long names
    // (about 27 MB); compacted it holds the 400 kept files and what came after the last
    // snapshot put in place (4 MiB and what came during the last one's write).
    let journal = cluster.data_dir(0).join("metadata.journal");
    let journal_bytes = std::fs::metadata(&journal).unwrap().len();
    assert!(
        journal_bytes < 20 << 20,
        "the journal was never compacted: {journal_bytes} bytes"
    );
    cluster.kill(0);
    cluster.restart(0);
    let fs = cluster.client();
    let mut listed: Vec<String> = fs
        .readdir(&dir)
        .unwrap()
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    listed.sort();
    assert_eq!(listed.len(), kept.len());
    assert!(listed == kept, "the files listed after the restart differ");
}

/// A write in place moves a file's modification time at close (rsync's quick check and
/// make trust it), and a server restarted on its data keeps that time: the update that
/// moves only the time was applied in memory and never journaled, so the restart gave
/// the file back its old time.
#[test]
fn a_write_in_place_keeps_its_modification_time_across_a_restart() {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 1,
        backend: "file",
        ..Default::default()
    });
    let fs = cluster.client();
    let mut moved = Vec::new();
    for (path, len) in [("/chunked", 3 * C), ("/small", 100)] {
        write_file(&fs, path, &pattern(len, 3));
        moved.push((path, write_in_place(&fs, path)));
    }
    drop(fs);
    cluster.kill(0);
    cluster.restart(0);
    let fs = cluster.client();
    for (path, mtime_ns) in moved {
        assert_eq!(
            fs.stat(path).unwrap().mtime_ns,
            mtime_ns,
            "{path}: the restart took back the time of the write in place"
        );
    }
}

/// A journal moved aside (as a server refusing a corrupt one advises) leaves the chunks of
/// the files it numbered behind. Regression (hostile-user run): the server numbered new
/// files from 1 again under the same tag, so a new file's hole read a lost file's bytes,
/// and its writes landed in the chunks of a file whose record a rename had moved to the
/// other server. Now it numbers them apart, under a new tag.
#[test]
fn a_server_whose_journal_was_moved_aside_numbers_new_files_apart_from_old_chunks() {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        backend: "file",
        ..Default::default()
    });
    let fs = cluster.client();
    let len = 3 * C;
    let mut survivors = Vec::new();
    for i in 0..16u64 {
        write_file(&fs, &format!("/old{i}"), &pattern(len, i));
        // Renamed, its record may move to the other server, keeping its number.
        let moved = format!("/moved{i}");
        fs.rename(&format!("/old{i}"), &moved).unwrap();
        survivors.push((moved, pattern(len, i)));
    }
    drop(fs);
    assert!(cluster.stop(0));
    let journal = cluster.data_dir(0).join("metadata.journal");
    std::fs::rename(&journal, cluster.dir.path().join("journal.aside")).unwrap();
    cluster.restart(0);

    let fs = cluster.client();
    // Files whose records were on server 0 are gone; the others are whole.
    survivors.retain(|(path, _)| fs.stat(path).is_ok());
    assert!(!survivors.is_empty(), "some records live on server 1");
    let byte_at = 2 * C as u64 + 5;
    for i in 0..32 {
        let path = format!("/new{i}");
        let fd = fs
            .open(&path, OpenFlags::CREATE | OpenFlags::WRITE, 0o644)
            .unwrap();
        fs.pwrite(fd, b"!", byte_at).unwrap();
        fs.close(fd).unwrap();
        let data = read_file(&fs, &path);
        assert_eq!(data.len() as u64, byte_at + 1, "{path}");
        assert!(
            data[..byte_at as usize].iter().all(|&b| b == 0),
            "{path}: its hole holds bytes it never had"
        );
    }
    for (path, data) in &survivors {
        assert!(read_file(&fs, path) == *data, "{path} was overwritten");
    }
}

/// Regression (hostile-user run): a server started on another node's data directory (two
/// swapped) came up and answered "not found" for every file, and a cluster resumed with
/// another virtual-node count read its files as holes. Each is refused, naming what the
/// directory holds, and the data is whole when the servers start as they were.
/// Two file servers that hold eight files named `prefix0`.. (returned with their bytes),
/// both stopped.
fn stopped_file_cluster_holding(prefix: &str) -> (Cluster, Vec<(String, Vec<u8>)>) {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        backend: "file",
        ..Default::default()
    });
    let fs = cluster.client();
    let files: Vec<(String, Vec<u8>)> = (0..8u64)
        .map(|i| (format!("{prefix}{i}"), pattern(3 * C + 7, i)))
        .collect();
    for (path, data) in &files {
        write_file(&fs, path, data);
    }
    drop(fs);
    assert!(cluster.stop(0) && cluster.stop(1));
    (cluster, files)
}

/// A new job's registry on an earlier job's data directory (under `mpirun` the default
/// `data_dir/r<rank>` is one path in every job): with fewer servers, a file whose record
/// stayed on its server and whose chunks had been placed on one that is gone read those
/// chunks as zeros, with success. The server refuses the data its registry does not
/// know it served, and keeps it for the registry it served in.
#[test]
fn a_data_directory_refuses_a_registry_it_did_not_serve_in_and_keeps_its_data() {
    let (mut cluster, files) = stopped_file_cluster_holding("/j");
    let new_job = cluster.dir.path().join("job2-registry");
    std::fs::create_dir(&new_job).unwrap();
    let mut command = cluster.server_command(&Cluster::node_id(0), &cluster.data_dir(0));
    command.arg("--registry").arg(&new_job);
    let log = cluster.dir.path().join("job2.log");
    let status = start_expecting_exit(&cluster, command, &log);
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "exit status {status}; output:\n{output}");
    assert!(
        output.contains(&format!(
            "{}: this data directory holds",
            cluster.data_dir(0).display()
        )) && output.contains("it marks no node0.member there"),
        "{output}"
    );
    assert!(benchfs::registry::read(&new_job).unwrap().is_empty());
    // An empty data directory starts in the new registry.
    let mut fresh =
        cluster.server_command(&Cluster::node_id(0), &cluster.dir.path().join("job2-data"));
    let mut fresh = fresh
        .arg("--registry")
        .arg(&new_job)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while benchfs::registry::read(&new_job).map_or(0, |e| e.len()) == 0 {
        assert!(
            fresh.try_wait().unwrap().is_none(),
            "a server on an empty data directory exited"
        );
        assert!(
            Instant::now() < deadline,
            "a server on an empty data directory did not publish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fresh.kill().unwrap();
    fresh.wait().unwrap();
    cluster.restart_stopped();
    let fs = cluster.client();
    for (path, data) in &files {
        assert!(read_file(&fs, path) == *data, "{path} came back changed");
    }
}

#[test]
fn a_data_directory_refuses_another_node_or_placement_and_keeps_its_data() {
    let (mut cluster, files) = stopped_file_cluster_holding("/p");
    let swapped = cluster.server_command(&Cluster::node_id(0), &cluster.data_dir(1));
    let mut other_placement = cluster.server_command(&Cluster::node_id(0), &cluster.data_dir(0));
    other_placement.env("BENCHFS_PLACEMENT_VIRTUAL_NODES", "3");
    for (name, command, holds, is) in [
        (
            "swapped",
            swapped,
            "node_id = \"node1\", virtual_nodes = 150",
            "node_id = \"node0\", virtual_nodes = 150",
        ),
        (
            "other-placement",
            other_placement,
            "node_id = \"node0\", virtual_nodes = 150",
            "node_id = \"node0\", virtual_nodes = 3",
        ),
    ] {
        let log = cluster.dir.path().join(format!("{name}.log"));
        let status = start_expecting_exit(&cluster, command, &log);
        let output = std::fs::read_to_string(&log).unwrap();
        assert!(
            !status.success(),
            "{name}: exit status {status}; output:\n{output}"
        );
        assert!(
            output.contains(&format!(
                "holds the data of {holds}, and this server is {is}"
            )),
            "{name}: {output}"
        );
    }
    cluster.restart_stopped();
    let fs = cluster.client();
    for (path, data) in &files {
        assert!(read_file(&fs, path) == *data, "{path} came back changed");
    }
}
