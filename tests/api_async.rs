//! The async API (`benchfs::api::BenchFS`) end to end on a current-thread runtime, beside
//! the blocking one over the same cluster, and its errors when there is no cluster.

mod common;

use benchfs::api::{ApiError, BenchFS, OpenFlags, Whence};
use benchfs::config::ServerConfig;
use benchfs::proto::ops::set_attr;
use common::files::read_file;
use common::{pattern, Cluster, ClusterSpec};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn async_client_round_trips_and_agrees_with_the_blocking_one() {
    let cluster = Cluster::start(ClusterSpec::default());
    let data = pattern(5 * 1024 * 1024 + 123, 7);
    block_on(async {
        let fs = BenchFS::new(cluster.config()).await.unwrap();
        fs.mkdir("/d", 0o755).await.unwrap();
        let fd = fs.create("/d/f", OpenFlags::WRITE).await.unwrap();
        assert_eq!(fs.write(fd, &data).await.unwrap(), data.len());
        assert_eq!(fs.fstat(fd).await.unwrap().size, data.len() as u64);
        fs.close(fd).await.unwrap();

        let fd = fs.open("/d/f", OpenFlags::READ).await.unwrap();
        let mut buf = vec![0u8; data.len() + 10];
        assert_eq!(fs.read(fd, &mut buf).await.unwrap(), data.len());
        assert!(buf[..data.len()] == data[..], "read back differs");
        assert_eq!(fs.seek(fd, 1000, Whence::Start).await.unwrap(), 1000);
        let mut part = [0u8; 100];
        assert_eq!(fs.pread(fd, &mut part, 4 << 20).await.unwrap(), 100);
        assert_eq!(&part[..], &data[4 << 20..(4 << 20) + 100]);
        fs.close(fd).await.unwrap();

        let names: Vec<String> = fs
            .readdir("/d")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["f"]);
        fs.rename("/d/f", "/d/g").await.unwrap();
        assert_eq!(fs.stat("/d/g").await.unwrap().size, data.len() as u64);
        let e = fs.stat("/d/f").await.unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
    });
    // The blocking client reads what the async one wrote.
    assert!(read_file(&cluster.client(), "/d/g") == data);
    block_on(async {
        let fs = BenchFS::new(cluster.config()).await.unwrap();
        fs.truncate("/d/g", 10).await.unwrap();
        fs.unlink("/d/g").await.unwrap();
        fs.rmdir("/d").await.unwrap();
        assert!(fs.readdir("/").await.unwrap().is_empty());
    });
}

#[test]
fn times_set_on_an_open_file_survive_its_close() {
    let cluster = Cluster::start(ClusterSpec::default());
    let stamp_ns = 1_000_000_000_123_456_789;
    block_on(async {
        let fs = BenchFS::new(cluster.config()).await.unwrap();
        let fd = fs.create("/stamped", OpenFlags::WRITE).await.unwrap();
        // Before the write: fstat publishes the size the handle reached.
        let file_id = fs.fstat(fd).await.unwrap().file_id;
        fs.write(fd, &pattern(100_000, 3)).await.unwrap();
        let stamp = fs.client().set_attr(benchfs::proto::ops::SetAttrRequest {
            path: "/stamped".into(),
            file_id,
            set: set_attr::ATIME | set_attr::MTIME,
            mode: 0,
            uid: 0,
            gid: 0,
            atime_ns: stamp_ns,
            mtime_ns: stamp_ns,
            ctime_ns: 0,
        });
        fs.run_with(stamp).await.unwrap();
        fs.close(fd).await.unwrap();
        let meta = fs.stat("/stamped").await.unwrap();
        assert_eq!((meta.size, meta.mtime_ns), (100_000, stamp_ns));
    });
}

#[test]
fn no_cluster_is_a_clear_error() {
    let root = tempfile::tempdir_in(common::test_root()).unwrap();
    for (what, dir) in [
        ("a missing registry", root.path().join("missing")),
        ("an empty registry", root.path().to_path_buf()),
    ] {
        let mut config = ServerConfig::default();
        config.network.registry_dir = dir.clone();
        let e = block_on(BenchFS::new(config)).unwrap_err();
        assert!(matches!(e, ApiError::NoServers { .. }), "{what}: {e:?}");
        let message = e.to_string();
        assert!(
            message.contains(&dir.display().to_string()) && message.contains("benchfsd"),
            "{what}: the message names the directory and how to start a server: {message}"
        );
        assert_eq!(e.errno(), libc::EIO, "{what}");
    }
}

/// A connected `MetadataManager` is a view of the cluster's one namespace: what it stores
/// is a file the file system sees, on the server the ring names.
#[test]
fn metadata_manager_stores_on_the_owning_server() {
    use benchfs::metadata::{CachePolicy, FileMetadata, MetadataManager};
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    fs.mkdir("/data", 0o755).unwrap();
    let records = |fs: &benchfs::blocking::BenchFS| -> Vec<(String, u64)> {
        fs.block_on(fs.client().server_stats())
            .into_iter()
            .map(|(entry, stats)| (entry.node_id, stats.unwrap().metadata_records))
            .collect()
    };
    let before = records(&fs);
    let owner = block_on(async {
        let manager = MetadataManager::connect(cluster.config(), CachePolicy::default())
            .await
            .unwrap();
        assert_eq!(manager.nodes().len(), before.len());
        assert!(
            !manager.add_node("elsewhere".into()),
            "a cluster's nodes are its servers"
        );
        let metadata = FileMetadata::new(1, "/data/file.txt".to_string(), 1024);
        manager.store_file_metadata(metadata).await.unwrap();
        let retrieved = manager.get_file_metadata("/data/file.txt").await.unwrap();
        assert_eq!(retrieved.size, 1024);
        let e = manager
            .store_file_metadata(FileMetadata::new(2, "/missing/f".into(), 1))
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "a record needs its parent: {e}");
        manager.owner("/data/file.txt").unwrap().unwrap()
    });
    assert_eq!(fs.stat("/data/file.txt").unwrap().size, 1024);
    for ((node, was), (_, now)) in before.iter().zip(records(&fs)) {
        let expected = if *node == owner { was + 1 } else { *was };
        assert_eq!(now, expected, "records on {node} (owner {owner})");
    }
}

/// An operation's future is moved whole at each await that starts it, and into the
/// runtime: held inline, the API's were 27 KiB and the client's close 9 KiB, and copying
/// them was a tenth of an mdtest rank's time. The call each operation makes is boxed.
#[test]
fn operation_futures_stay_small() {
    let cluster = Cluster::start(ClusterSpec::default());
    block_on(async {
        let fs = BenchFS::new(cluster.config()).await.unwrap();
        let api = [
            std::mem::size_of_val(&fs.stat("/")),
            std::mem::size_of_val(&fs.open("/f", OpenFlags::READ)),
            std::mem::size_of_val(&fs.close(1)),
        ];
        let client = fs.client();
        let ops = [
            std::mem::size_of_val(&client.stat("/")),
            std::mem::size_of_val(&client.close(1)),
        ];
        assert!(api.iter().all(|&n| n <= 512), "api futures {api:?} bytes");
        assert!(
            ops.iter().all(|&n| n <= 6144),
            "client futures {ops:?} bytes"
        );
    });
}
