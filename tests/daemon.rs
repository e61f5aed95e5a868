//! The `benchfsd` process itself: clean shutdown, logging, launcher ranks, bad
//! configuration, and the `benchfs cluster` commands that drive it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::files::{read_file, write_file};
use common::{test_root, Cluster, ClusterSpec};

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_withdraws_and_exits_zero() {
    let mut cluster = Cluster::start(ClusterSpec {
        servers: 2,
        backend: "file",
        ..Default::default()
    });
    let fs = cluster.client();
    write_file(&fs, "/kept", b"acknowledged before the signal");
    assert!(cluster.stop(1), "benchfsd must exit 0 on SIGTERM");
    let entries = benchfs::registry::read(&cluster.registry()).unwrap();
    assert_eq!(
        entries.len(),
        1,
        "a stopped server withdraws its registry entry"
    );
    let log = std::fs::read_to_string(cluster.data_dir(1).join("benchfs.log")).unwrap();
    assert!(
        log.contains("benchfsd serving") && log.contains("stopped cleanly"),
        "{log}"
    );
    cluster.restart(1);
    assert_eq!(
        read_file(&cluster.client(), "/kept"),
        b"acknowledged before the signal"
    );
}

#[test]
fn launcher_ranks_start_distinct_servers_from_one_config() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let config = dir.path().join("benchfs.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nnode_id = \"job\"\ndata_dir = \"{}\"\n[storage]\nbackend = \"memory\"\n[network]\nbind_addr = \"127.0.0.1:50051\"\nregistry_dir = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("registry").display()
        ),
    )
    .unwrap();
    let mut children = Vec::new();
    for (var, rank) in [
        ("OMPI_COMM_WORLD_RANK", "0"),
        ("PMI_RANK", "1"),
        ("SLURM_PROCID", "2"),
    ] {
        children.push(
            Command::new(env!("CARGO_BIN_EXE_benchfsd"))
                .arg("--config")
                .arg(&config)
                .env(var, rank)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let registry = dir.path().join("registry");
    wait_for("three ranks", || {
        benchfs::registry::read(&registry)
            .map(|e| e.len())
            .unwrap_or(0)
            == 3
    });
    let ids: Vec<String> = benchfs::registry::read(&registry)
        .unwrap()
        .into_iter()
        .map(|e| e.node_id)
        .collect();
    assert_eq!(ids, ["job-r0", "job-r1", "job-r2"]);
    for rank in 0..3 {
        assert!(dir
            .path()
            .join("data")
            .join(format!("r{rank}"))
            .join("benchfs.log")
            .exists());
    }
    let mut config = benchfs::config::ServerConfig::from_file(&config).unwrap();
    config.network.registry_dir = registry;
    let fs = benchfs::blocking::BenchFS::connect(&config).unwrap();
    write_file(&fs, "/across-ranks", &[7u8; 100_000]);
    assert_eq!(read_file(&fs, "/across-ranks"), vec![7u8; 100_000]);
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[storage]\nchunk_size = 12345\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_benchfsd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("storage.chunk_size") && stderr.contains("power of two"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_benchfsd"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // A secret longer than the handshake carries is refused up front, not at encode time.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, vec![b's'; 70_000]).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_benchfsd"))
        .args(["--backend", "memory", "--registry"])
        .arg(dir.path().join("registry"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret-file"));
    // An address another program holds is named, with the setting that chose it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_benchfsd"))
        .args(["--backend", "memory", "--bind", &addr, "--registry"])
        .arg(dir.path().join("registry"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("network.bind_addr"),
        "{stderr}"
    );
    let config = benchfs::config::ServerConfig::default();
    let err =
        benchfs::blocking::BenchFS::connect_with_secret(&config, vec![0; 70_000]).unwrap_err();
    assert!(err.to_string().contains("job secret"), "{err}");
}

#[test]
fn cluster_commands_run_a_cluster_and_move_files() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let cluster_dir = dir.path().join("c");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_benchfs"))
            .args(args)
            .arg("--dir")
            .arg(&cluster_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "benchfs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["cluster", "up", "--servers", "3", "--backend", "file"]);
    let local = dir.path().join("in.bin");
    let data = common::pattern(5_000_000, 3);
    std::fs::write(&local, &data).unwrap();
    cli(&["mkdir", "/d"]);
    cli(&["put", local.to_str().unwrap(), "/d/f"]);
    assert!(cli(&["ls", "/d"]).contains(" 5000000 f"));
    assert!(cli(&["stat", "/d/f"]).contains("size 5000000"));
    let back = dir.path().join("out.bin");
    cli(&["get", "/d/f", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let status = cli(&["cluster", "status"]);
    assert_eq!(
        status.lines().filter(|l| l.starts_with("node")).count(),
        4,
        "a header and 3 servers:\n{status}"
    );
    cli(&["rm", "/d/f"]);
    cli(&["rm", "/d"]);
    assert!(!cli(&["ls", "/"]).contains(" d"));
    assert!(cli(&["cluster", "down"]).contains("3 servers stopped (0 forced)"));
}
